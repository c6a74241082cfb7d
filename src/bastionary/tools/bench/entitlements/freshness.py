"""(b) freshness: a background usage stream, the trial customers, the worker's flushes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bastionary.tools.bench.entitlements.backlog import _healthz_report
from bastionary.tools.bench.entitlements.constants import (
    POLL_S,
    TARGET_FRESHNESS_P99_S,
    TRIAL_LIMIT,
    TRIAL_TIMEOUT_S,
)
from bastionary.tools.bench.entitlements.figures import Figures, _seconds
from bastionary.tools.bench.entitlements.preparation import Check, _usage, _usage_batch
from bastionary.tools.bench.options import BenchError
from bastionary.tools.bench.processes import _say
from bastionary.tools.bench.stack import _Worker

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from bastionary.kafka import UsageProducer


class _Background:
    """A steady stream of usage from a child process: ``rate`` events/s in records of
    ``per_record`` events, each record one customer's (the key).

    A process, not a thread: building and sending 13,000 events/s is CPU-bound Python, and in a
    thread of the bench it would hold the interpreter the check client needs, so the check
    latency measured would include the load generator's own waits.
    """

    def __init__(self, bootstrap: str, topic: str, customers: list[str], rate: float, per_record: int) -> None:
        context = multiprocessing.get_context("spawn")  # the bench runs an event loop: never fork it
        self._stop = context.Event()
        self._results: multiprocessing.queues.Queue[tuple[str, Any]] = context.Queue()
        self._process = context.Process(
            target=_stream_in_child,
            args=(_Stream(bootstrap, topic, customers, rate, per_record), self._stop, self._results),
            name="bench-background-usage",
            daemon=True,
        )
        self._outcome: tuple[str, Any] | None = None

    def start(self) -> None:
        self._process.start()

    def stop(self) -> Figures:
        self._stop.set()
        self._collect(timeout=60)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        self.raise_if_failed()
        if self._outcome is None:
            raise BenchError(f"the background usage stream exited with {self._process.exitcode} and no figures")
        stats: Figures = self._outcome[1]
        return stats

    def raise_if_failed(self) -> None:
        self._collect(timeout=0)
        if self._outcome is not None and self._outcome[0] == "error":
            raise BenchError(f"the background usage stream failed: {self._outcome[1]}")
        if self._outcome is None and self._process.exitcode not in (None, 0):
            raise BenchError(f"the background usage stream exited with {self._process.exitcode}")

    def _collect(self, timeout: float) -> None:
        if self._outcome is None:
            with contextlib.suppress(queue.Empty):
                self._outcome = self._results.get(timeout=timeout) if timeout else self._results.get_nowait()


@dataclass(frozen=True)
class _Stream:
    """What the child streams: picklable, as a spawned process receives it."""

    bootstrap: str
    topic: str
    customers: list[str]
    rate: float  # events/s
    per_record: int


def _stream_in_child(
    stream: _Stream, stop: multiprocessing.synchronize.Event, results: multiprocessing.queues.Queue[tuple[str, Any]]
) -> None:
    try:
        results.put(("stats", asyncio.run(_produce(stream, stop))))
    except BaseException as exc:
        results.put(("error", repr(exc)))


async def _produce(stream: _Stream, stop: multiprocessing.synchronize.Event) -> Figures:
    from bastionary.kafka import UsageProducer

    ends: dict[int, int] = {}

    def acked(future: asyncio.Future[Any]) -> None:  # of aiokafka's RecordMetadata
        if not future.cancelled() and future.exception() is None:
            meta = future.result()
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)

    rng = random.Random(11)
    tag = secrets.token_hex(4)
    async with UsageProducer(stream.bootstrap, linger_ms=5) as producer:
        started = time.monotonic()
        sent = 0
        while not stop.is_set():
            due = int((time.monotonic() - started) * stream.rate) + 1
            while sent < due:
                customer = rng.choice(stream.customers)
                value = _usage_batch(customer, [f"bg-{tag}-{sent + i}" for i in range(stream.per_record)])
                future = await producer.send(stream.topic, value, key=customer.encode())
                future.add_done_callback(acked)
                sent += stream.per_record
            await asyncio.sleep(0.01)
        seconds = time.monotonic() - started
        await producer.flush()
    return {
        "events": sent,
        "seconds": round(seconds, 1),
        "events_per_s": round(sent / max(seconds, 1e-6)),
        "ends": ends,
    }


async def _freshness(
    worker: _Worker,
    producer: UsageProducer,
    topic: str,
    check: Check,
    customers: list[str],
    flush_s: float,
    rng: random.Random,
    backlog: Callable[[], Awaitable[str]],
) -> Figures:
    """``backlog`` words what the worker's ``/healthz`` says, for a trial that is not counted:
    a worker behind the stream and one that lost track of the events read differently there."""
    from_send: list[float] = []
    from_ack: list[float] = []
    missing = 0
    for n, customer in enumerate(customers):
        worker.check_alive()
        # TRIAL_LIMIT - 1 events, landed and counted.
        futures = [
            await producer.send(topic, _usage(customer, f"{customer}-{i}"), key=customer.encode())
            for i in range(TRIAL_LIMIT - 1)
        ]
        await asyncio.gather(*futures)
        deadline = time.monotonic() + TRIAL_TIMEOUT_S
        while True:
            status, body = await check(customer)
            if status == 200 and body is not None and Decimal(body["usage"]) >= TRIAL_LIMIT - 1:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"trial {customer}: {TRIAL_LIMIT - 1} events not counted in {TRIAL_TIMEOUT_S:.0f}s"
                    f" (last {status} {body}; {await backlog()}); see {worker.log_path}"
                )
            await asyncio.sleep(0.02)
        if body["has_access"] is not True:
            raise BenchError(f"trial {customer}: no access before its limit: {body}")
        # Anywhere within a flush cycle, as a real event would arrive.
        await asyncio.sleep(rng.uniform(0, flush_s))
        before = time.monotonic()
        future = await producer.send(topic, _usage(customer, f"{customer}-last"), key=customer.encode())
        await future
        acked = time.monotonic()
        deadline = acked + TRIAL_TIMEOUT_S
        while True:
            status, body = await check(customer)
            seen = time.monotonic()
            if status == 200 and body is not None and body["has_access"] is False:
                if body.get("reason") != "exhausted":
                    raise BenchError(f"trial {customer}: denied for another reason: {body}")
                from_send.append(seen - before)
                from_ack.append(seen - acked)
                break
            if seen > deadline:
                missing += 1
                break
            await asyncio.sleep(POLL_S)
        flipped = (
            f"{seen - before:.3f} s"
            if status == 200 and body is not None and body["has_access"] is False
            else f"never flipped ({await backlog()})"
        )
        _say(f"    trial {n + 1}/{len(customers)}: {flipped}")
    from_send.sort()
    from_ack.sort()
    p99 = _seconds(from_send, 0.99)
    return {
        "trials": len(customers),
        "flipped": len(from_send),
        "missing": missing,
        "p50_s": _seconds(from_send, 0.50),
        "p90_s": _seconds(from_send, 0.90),
        "p99_s": p99,
        "max_s": round(from_send[-1], 3) if from_send else None,
        "min_s": round(from_send[0], 3) if from_send else None,
        "from_ack_p50_s": _seconds(from_ack, 0.50),
        "from_ack_p99_s": _seconds(from_ack, 0.99),
        "target_p99_s": TARGET_FRESHNESS_P99_S,
        "met": missing == 0 and p99 is not None and p99 <= TARGET_FRESHNESS_P99_S,
    }


async def _worker_backlog(session: ClientSession, port: int) -> str:
    """The worker's ``/healthz`` in a line: its status, the records each partition has yet to
    land, and its problems."""
    try:
        report = await _healthz_report(session, port)
        partitions = report["partitions"]
        waiting = ", ".join(f"{name} {p['waiting']:,}" for name, p in sorted(partitions.items()))
        problems = "; ".join(report["problems"])
        return f"the worker's /healthz: {report['status']}, records waiting to land: {waiting or 'no partitions'}" + (
            f"; {problems}" if problems else ""
        )
    except Exception as exc:  # a figure for an error message: its absence is said, never raised
        return f"the worker's /healthz gave no answer to read: {type(exc).__name__}: {exc}"
