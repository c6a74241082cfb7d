"""The hostile-producer soak: about ten minutes of valid usage mixed with every hostile class,
at a steady rate, with the broker wiped and restarted, and the worker SIGKILLed, midway.

At the end: every distinct valid event counted once (totals per customer equal the ground
truth), every hostile record in usage.dlq with its class, the worker never stopped by its
input, and its memory and disk bounded. The figures are printed in the test summary.
``BASTIONARY_TEST_SOAK_SECONDS`` shortens it (default 540 seconds of producing).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bastionary.devstack.broker import free_port
from bastionary.kafka import read_topic

from . import hostile
from .test_trust import _broker_epoch, _gateway_client, _run_env, _start, _stop, http_get, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("BASTIONARY_TEST_SOAK_SECONDS", "540"))
VALID_PER_SECOND = 150
CUSTOMERS = [f"soak-{i}" for i in range(40)]
FIGURES: list[str] = []  # shown by tests/conftest.py in the terminal summary


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _disk_mb(path: Path) -> float:
    """Bytes under ``path``; ClickHouse merges move files while we walk, so lost ones count 0."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


class Producer:
    """Steady valid usage with repeats, plus one round of the hostile catalogue now and then."""

    def __init__(self, bootstrap: str, tag: str) -> None:
        self.bootstrap = bootstrap
        self.tag = tag
        self.rng = random.Random(7)
        self.sent: list[dict] = []  # every distinct valid event ever produced
        self.truth: Counter[str] = Counter()  # tokens per customer
        self.expected_letters: Counter[str] = Counter()
        self.rounds = 0

    def _valid(self, n: int) -> list[hostile.Hostile]:
        records = []
        for _ in range(n):
            if self.sent and self.rng.random() < 0.1:  # a repeat: counted once
                event = self.rng.choice(self.sent)
            else:
                customer = self.rng.choice(CUSTOMERS)
                event = hostile.event(f"v-{len(self.sent)}", customer, tokens=self.rng.randint(1, 1000))
                self.sent.append(event)
                self.truth[customer] += event["data"]["tokens"]
            records.append(hostile.Hostile(event["subject"].encode(), orjson.dumps(event), events=1))
        # Some as 20-event batches of one customer, the rest single.
        by_customer: dict[bytes, list[hostile.Hostile]] = {}
        for record in records[: len(records) // 2]:
            by_customer.setdefault(record.key or b"", []).append(record)
        batches = [
            hostile.Hostile(key, b"[" + b",".join(r.value or b"" for r in group) + b"]", events=len(group))
            for key, group in by_customer.items()
        ]
        return batches + records[len(records) // 2 :]

    def _hostile(self) -> list[hostile.Hostile]:
        self.rounds += 1
        records = hostile.catalogue(f"{self.tag}{self.rounds}", self.rng.choice(CUSTOMERS), max_batch=50)
        for record in records:
            if record.expect:
                self.expected_letters[record.expect] += 1
            elif record.value:
                event = orjson.loads(record.value)
                self.sent.append(event)
                self.truth[event["subject"]] += event["data"]["tokens"]
        return records

    def run_for(self, seconds: float, on_tick=None) -> None:
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < seconds:
            batch = self._valid(VALID_PER_SECOND) + (self._hostile() if tick % 3 == 0 else [])
            hostile.publish(self.bootstrap, "usage.events", batch)
            tick += 1
            if on_tick is not None:
                on_tick(tick)
            time.sleep(max(0.0, started + tick - time.monotonic()))


def _dead_letters(bootstrap: str) -> Counter[str]:
    """Distinct dead letters per class (delivery is at least once: repeats share a source)."""
    messages = asyncio.run(read_topic(bootstrap, "usage.dlq", idle_seconds=5, expect=None))
    seen: dict[tuple, str] = {}
    for message in messages:
        headers = dict(message.headers)
        identity = (headers["source.partition"], headers["source.offset"], headers.get("source.index"))
        seen[identity] = headers["error.class"].decode()
    return Counter(seen.values())


def test_hostile_producers_a_broker_wipe_and_a_sigkill_leave_totals_exact(tmp_path):
    broker_dir, data_dir, port, web = tmp_path / "broker", tmp_path / "data", free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker_env = _run_env(broker_dir, 0)
    run_env = _run_env(
        data_dir,
        web,
        BASTIONARY_KAFKA_BOOTSTRAP=bootstrap,
        BASTIONARY_MAX_BATCH_EVENTS="50",
        BASTIONARY_WORKER_ID="soak",
        BASTIONARY_LOG_LEVEL="WARNING",
    )
    broker = _start(["broker", "--port", str(port)], broker_env, tmp_path / "broker.log")
    wait_until(lambda: (broker_dir / "broker.json").exists(), what="the broker")
    run = _start(["run"], run_env, tmp_path / "run.log")
    samples: list[tuple[float, float, float]] = []  # (seconds, worker RSS MB, data dir MB)
    started = time.monotonic()

    def sample(_tick: int) -> None:
        if run.poll() is None:
            samples.append((time.monotonic() - started, _rss_mb(run.pid), _disk_mb(data_dir)))

    def landed() -> int:
        return _gateway_client(data_dir).command("SELECT count() FROM usage_events FINAL")

    def drained(producer: Producer) -> None:
        wait_until(lambda: landed() == len(producer.sent), timeout=300, what=f"{len(producer.sent)} events landed")

    try:
        wait_until(lambda: (data_dir / "query-gateway.json").exists(), what="the worker")
        # Phase 1: a third of the time, then everything produced has landed.
        first = Producer(bootstrap, "a")
        first.run_for(SOAK_SECONDS / 3, sample)
        drained(first)
        letters_1 = _dead_letters(bootstrap)
        assert letters_1 == first.expected_letters

        # The broker is wiped (its logs, its DLQ, the group's offsets) and comes back.
        epoch_before = _broker_epoch(broker_dir)
        _stop(broker)
        wait_until(lambda: http_get(f"http://127.0.0.1:{web}/healthz")[0] == 503, what="/healthz failing")
        broker = _start(["broker", "--port", str(port)], broker_env, tmp_path / "broker.log")
        wait_until(lambda: _broker_epoch(broker_dir) != epoch_before, what="the new broker announced")
        wait_until(lambda: http_get(f"http://127.0.0.1:{web}/healthz")[0] == 200, what="the worker healthy again")

        # Phase 2: the rest of the time, with the worker SIGKILLed and started again midway.
        second = Producer(bootstrap, "b")
        second.rng.seed(11)
        second.sent = list(first.sent)  # repeats of phase 1 events must still count once
        second.truth = Counter(first.truth)
        kill_at = int(SOAK_SECONDS / 3)

        def kill_midway(tick: int) -> None:
            nonlocal run
            sample(tick)
            if tick == kill_at:
                os.kill(run.pid, signal.SIGKILL)
                run.wait(30)
                run = _start(["run"], run_env, tmp_path / "run.log")

        second.run_for(2 * SOAK_SECONDS / 3, kill_midway)
        drained(second)
        letters_2 = _dead_letters(bootstrap)
        assert letters_2 == second.expected_letters

        totals = dict(
            _gateway_client(data_dir)
            .query(
                "SELECT customer_id, sum(value_sum) FROM usage_rollup_1m WHERE meter = 'llm_tokens' GROUP BY customer_id"
            )
            .result_rows
        )
        assert {c: int(v) for c, v in totals.items()} == dict(second.truth)
        assert run.poll() is None  # alive: nothing it read stopped it
        output = (tmp_path / "run.log").read_text(errors="replace")
        assert "flush failed" not in output and "internal_error" not in output

        rss = [r for _, r, _ in samples]
        disk = [d for _, _, d in samples]
        late = [r for t, r, _ in samples if t > SOAK_SECONDS * 0.8]
        FIGURES.extend(
            [
                (
                    f"soak: {SOAK_SECONDS:.0f} s producing, {len(second.sent)} distinct valid events "
                    f"({VALID_PER_SECOND}/s, 10% repeats, singles and 20-event batches), "
                    f"{sum(letters_1.values()) + sum(letters_2.values())} hostile records in {len(letters_1 | letters_2)} classes"
                ),
                (
                    f"soak: totals exact for {len(totals)} customers; dead letters per class as sent "
                    f"(phase 1 {dict(letters_1)}, phase 2 {dict(letters_2)})"
                ),
                (
                    f"soak: worker RSS min {min(rss):.0f} MB, max {max(rss):.0f} MB, last fifth max {max(late):.0f} MB;"
                    f" data dir {min(disk):.0f}..{max(disk):.0f} MB"
                ),
            ]
        )
        assert max(rss) < 1500 and max(disk) < 2000  # bounded, not growing without limit
    finally:
        _stop(run)
        _stop(broker)
