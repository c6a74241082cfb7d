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


@pytest.mark.parametrize("processes", [1, 2], ids=["one-flush-process", "two-flush-processes"])
def test_flush_process_killed_twice_and_the_worker_once_keep_totals_exact(stack, processes):
    """BASTIONARY_FLUSH_PROCESS: a SIGKILL of a flush process fails the flush in progress
    and stops the worker (its supervisor, here the test, restarts it); a SIGKILL of the worker
    ends its flush processes too, which must not outlive it. With two, the one killed is one
    of them, and the other may have landed its partitions' share of that flush."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    workload = generate(120_000, customers=200, duplicate_rate=0.10, late_events=300, bad_records=7, seed=seed)
    env = {"BASTIONARY_FLUSH_PROCESS": "true", "BASTIONARY_FLUSH_PROCESSES": str(processes)}
    stack.start_worker(**env)
    ends = {}
    producer = threading.Thread(target=lambda: ends.update(publish(stack, workload.records)))
    producer.start()
    for _crash in range(2):
        time.sleep(rng.uniform(2.0, 6.0))
        flusher = rng.choice(_flush_process_pids(stack, "w1", processes))
        os.kill(flusher, signal.SIGKILL)
        assert stack.workers["w1"].wait(60) != 0, "the worker must stop once its flush process died"
        stack.workers.pop("w1")
        stack.start_worker(**env)
    time.sleep(rng.uniform(2.0, 6.0))
    flushers = _flush_process_pids(stack, "w1", processes)
    stack.kill_worker("w1")
    for flusher in flushers:
        wait_until(lambda f=flusher: not _alive(f), timeout=30, what="the flush processes ending with their worker")
    stack.start_worker(**env)
    producer.join()
    stack.wait_caught_up(ends, timeout=600)
    _exactness(stack, workload)
    letters = dead_letters(stack, idle=3.0)
    assert len({_source(m) for m in letters}) == 7


def _flush_process_pids(stack, worker_id: str, processes: int) -> list[int]:
    """The pids of the worker's current flush processes, from its log lines "flush process started"."""
    worker_pid = stack.workers[worker_id].pid

    def started() -> list[int]:
        pids = []
        for line in stack.worker_log(worker_id).splitlines():
            if '"flush process started"' in line:
                pid = json.loads(line)["pid"]
                if _parent_of(pid) == worker_pid:
                    pids.append(pid)
        return pids

    wait_until(lambda: len(started()) == processes, timeout=120, what="the worker's flush processes")
    return started()


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
