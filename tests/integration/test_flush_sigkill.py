"""SIGKILL between each pair of a flush's steps, on the real sink, ClickHouse (chdb) and RocksDB.

The steps, in the order :meth:`bastionary.metering.sink.UsageSink._land` fixes: the marker,
the raw events, the rollups, the dedupe cache, then the commit of the acked offsets. A worker
process (``flush_kill_child``) is killed right after one of them, in its second flush, where
the dedupe cache already holds keys; a new process then reads from the committed offset to the
end. Whatever step it died after, ClickHouse ends with the workload's exact totals: every
distinct event once, every meter's value, and the repeats counted as duplicates. The same
holds with the flush in a flush process, and with two flush processes sharing four
partitions, one of them killed while the other finishes its share of the step.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bastionary.storage.client import open_client
from bastionary.tools.bench.workloads import _exactness
from tests.integration.flush_kill_child import FLUSH_PROCESS_DIED, workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
STEPS = ["insert_markers", "insert_events", "insert_rollups", "dedupe.record", "kafka_commit"]
FLUSH_PROCESS_STEPS = ["plan", "insert_markers", "insert_events", "insert_rollups", "dedupe.record"]


def child(directory: Path, now_ms: int, *kill: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "tests.integration.flush_kill_child", str(directory), str(now_ms), *kill]
    return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=300, check=False)


@pytest.mark.parametrize("step", STEPS)
def test_a_worker_killed_after_any_step_of_a_flush_leaves_exact_totals(tmp_path, step):
    now_ms = int(time.time() * 1000)
    killed = child(tmp_path, now_ms, step, "2")
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    finished = child(tmp_path, now_ms)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]

    client = open_client(f"chdb://{tmp_path}/clickhouse", "bastionary")
    exactness = _exactness(client, workload(now_ms))
    assert exactness["exact"], exactness
    assert exactness["stored_events"] == exactness["expected_events"] > 0


@pytest.mark.parametrize("step", FLUSH_PROCESS_STEPS)
def test_a_flush_process_killed_after_any_step_leaves_exact_totals(tmp_path, step):
    """BASTIONARY_FLUSH_PROCESS: the flush process, which owns chdb and the dedupe cache here,
    is the one killed; the worker's flush fails, it stops, and its restart lands the rest."""
    now_ms = int(time.time() * 1000)
    killed = child(tmp_path, now_ms, step, "2", "--flush-process")
    stderr = killed.stderr.decode()
    assert killed.returncode == FLUSH_PROCESS_DIED, stderr[-2000:]
    assert "exit code -9" in stderr, stderr[-2000:]
    finished = child(tmp_path, now_ms, "--flush-process")
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]

    client = open_client(f"chdb://{tmp_path}/clickhouse", "bastionary")
    exactness = _exactness(client, workload(now_ms))
    assert exactness["exact"], exactness
    assert exactness["stored_events"] == exactness["expected_events"] > 0


@pytest.mark.parametrize("step", FLUSH_PROCESS_STEPS)
def test_one_of_two_flush_processes_killed_after_any_step_leaves_exact_totals(tmp_path, clickhouse_url, step):
    """BASTIONARY_FLUSH_PROCESSES=2 over four partitions, on a ClickHouse server: one flush
    process is killed after a step while the other finishes its share of it (or has none, for
    the markers, which the first writes). The worker's flush fails and it stops; its restart
    replays, and the other's landed share is dropped by token and matched by its own keys."""
    database = f"kill_{uuid.uuid4().hex[:10]}"
    sharded = ["--flush-processes=2", f"--clickhouse={clickhouse_url}", f"--database={database}"]
    now_ms = int(time.time() * 1000)
    killed = child(tmp_path, now_ms, step, "2", *sharded)
    stderr = killed.stderr.decode()
    assert killed.returncode == FLUSH_PROCESS_DIED, stderr[-2000:]
    assert "exit code -9" in stderr, stderr[-2000:]
    finished = child(tmp_path, now_ms, *sharded)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]

    client = open_client(clickhouse_url, database)
    exactness = _exactness(client, workload(now_ms))
    assert exactness["exact"], exactness
    assert exactness["stored_events"] == exactness["expected_events"] > 0


@pytest.mark.parametrize("restarted_with", [1, 3])
def test_a_restart_with_another_number_of_flush_processes_leaves_exact_totals(tmp_path, clickhouse_url, restarted_with):
    """Partitions move between flush processes (and their dedupe caches) when their number
    changes: each reads back from ClickHouse the keys its new cache lacks, so the repeats
    still in the workload after the restart count once."""
    database = f"reshard_{uuid.uuid4().hex[:10]}"
    server = [f"--clickhouse={clickhouse_url}", f"--database={database}"]
    now_ms = int(time.time() * 1000)
    killed = child(tmp_path, now_ms, "dedupe.record", "3", "--flush-processes=2", *server)
    assert killed.returncode == FLUSH_PROCESS_DIED, killed.stderr.decode()[-2000:]
    finished = child(tmp_path, now_ms, f"--flush-processes={restarted_with}", *server)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]

    exactness = _exactness(open_client(clickhouse_url, database), workload(now_ms))
    assert exactness["exact"], exactness
    assert exactness["duplicates_dropped"] == exactness["expected_duplicates"] > 0
