"""Fault injection: workers killed with SIGKILL mid-run must leave ClickHouse totals exact."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from bastionary.devstack.broker import free_port
from bastionary.tools.workload import generate

from .helpers import assert_totals_equal, dead_letters, pipeline_totals, publish
from .test_trust import http_get, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _exactness(stack, workload) -> None:
    assert_totals_equal(pipeline_totals(stack), workload.truth())
    stored = stack.query("SELECT count() FROM usage_events FINAL")[0][0]
    assert stored == len(workload.unique_events)
    # Every rollup is re-derivable from the raw events: the per-customer event counts agree.
    rollup_events = stack.query("SELECT sum(event_count) FROM usage_rollup_1m WHERE meter = 'llm_requests'")[0][0]
    raw_events = stack.query("SELECT count() FROM usage_events FINAL WHERE type = 'llm.completion'")[0][0]
    assert rollup_events == raw_events


def test_three_sigkills_at_random_moments_keep_totals_exact(stack):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    # ~200k events: 182k distinct plus 10% repeats, across single, batch and binary records.
    workload = generate(182_000, customers=300, duplicate_rate=0.10, late_events=500, bad_records=7, seed=seed)
    stack.start_worker()
    ends = {}
    producer = threading.Thread(target=lambda: ends.update(publish(stack, workload.records)))
    producer.start()
    for _crash in range(3):
        time.sleep(rng.uniform(3.0, 9.0))
        stack.kill_worker("w1")  # SIGKILL: no flush, no commit, no goodbye
        stack.start_worker()
    producer.join()
    stack.wait_caught_up(ends, timeout=600)
    _exactness(stack, workload)
    letters = dead_letters(stack, idle=3.0)
    assert {int(m.offset) for m in letters} and len({_source(m) for m in letters}) == 7


def test_flush_process_killed_twice_and_the_worker_once_keep_totals_exact(stack):
    """BASTIONARY_FLUSH_PROCESS: a SIGKILL of the flush process fails the flush in progress
    and stops the worker (its supervisor, here the test, restarts it); a SIGKILL of the worker
    ends its flush process too, which must not outlive it."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    workload = generate(120_000, customers=200, duplicate_rate=0.10, late_events=300, bad_records=7, seed=seed)
    stack.start_worker(BASTIONARY_FLUSH_PROCESS="true")
    ends = {}
    producer = threading.Thread(target=lambda: ends.update(publish(stack, workload.records)))
    producer.start()
    for _crash in range(2):
        time.sleep(rng.uniform(2.0, 6.0))
        flusher = _flush_process_pid(stack, "w1")
        os.kill(flusher, signal.SIGKILL)
        assert stack.workers["w1"].wait(60) != 0, "the worker must stop once its flush process died"
        stack.workers.pop("w1")
        stack.start_worker(BASTIONARY_FLUSH_PROCESS="true")
    time.sleep(rng.uniform(2.0, 6.0))
    flusher = _flush_process_pid(stack, "w1")
    stack.kill_worker("w1")
    wait_until(lambda: not _alive(flusher), timeout=30, what="the flush process ending with its worker")
    stack.start_worker(BASTIONARY_FLUSH_PROCESS="true")
    producer.join()
    stack.wait_caught_up(ends, timeout=600)
    _exactness(stack, workload)
    letters = dead_letters(stack, idle=3.0)
    assert len({_source(m) for m in letters}) == 7


def _flush_process_pid(stack, worker_id: str) -> int:
    """The pid of the worker's current flush process, from its log line "flush process started"."""
    worker_pid = stack.workers[worker_id].pid

    def started() -> int | None:
        for line in reversed(stack.worker_log(worker_id).splitlines()):
            if '"flush process started"' in line:
                pid = json.loads(line)["pid"]
                return pid if _parent_of(pid) == worker_pid else None
        return None

    wait_until(lambda: started() is not None, timeout=120, what="the worker's flush process")
    pid = started()
    assert pid is not None
    return pid


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _source(message) -> tuple:
    headers = dict(message.headers)
    return headers["source.partition"], headers["source.offset"], headers.get("source.index")


def test_two_workers_one_killed_mid_run_keep_totals_exact(stack):
    workload = generate(60_000, customers=200, duplicate_rate=0.10, late_events=200, seed=23)
    ports = {"w1": free_port(), "w2": free_port()}
    for worker_id, port in ports.items():
        stack.start_worker(worker_id, BASTIONARY_WEB_PORT=str(port))
    wait_until(
        lambda: all(http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200 for port in ports.values()),
        timeout=120,
        what="both workers serving",
    )
    ends = {}
    producer = threading.Thread(target=lambda: ends.update(publish(stack, workload.records)))
    producer.start()
    # Killed only once both have landed usage: the group was split, and w2 dies holding some.
    # Two flushes of one partition, because w1 replays w2's newest one there (same first
    # offset, so its row replaces w2's) and only the earlier one stays w2's.
    wait_until(
        lambda: stack.query(
            "SELECT uniqExact(worker_id) = 2 AND countIf(worker_id = 'w2') > uniqExactIf((topic, partition), worker_id = 'w2')"
            " FROM ingest_progress"
        )[0][0],
        timeout=180,
        what="w1 landed a flush and w2 two of one partition",
    )
    stack.kill_worker("w2")  # its partitions move to w1 after the session timeout
    producer.join()
    stack.wait_caught_up(ends, timeout=600)
    _exactness(stack, workload)
    owners = stack.query("SELECT groupUniqArray(worker_id) FROM ingest_progress")[0][0]
    assert set(owners) == {"w1", "w2"}, "both workers should have landed flushes"
