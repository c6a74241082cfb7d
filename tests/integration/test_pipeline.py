"""The usage pipeline end to end: real broker, real ClickHouse (see tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from bastionary.tools.bench.processes import descendants
from bastionary.tools.workload import Record, generate

from .helpers import assert_totals_equal, dead_letters, pipeline_totals, publish

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "placement",
    [
        {"BASTIONARY_EXAMINE_PROCESSES": "0"},
        {"BASTIONARY_EXAMINE_PROCESSES": "1"},
        {"BASTIONARY_FLUSH_PROCESS": "true"},
        {"BASTIONARY_FLUSH_PROCESS": "true", "BASTIONARY_EXAMINE_PROCESSES": "1"},
        {"BASTIONARY_FLUSH_PROCESS": "true", "BASTIONARY_FLUSH_PROCESSES": "2"},
    ],
    ids=[
        "examined-in-worker",
        "examined-in-child",
        "flushed-in-child",
        "flushed-in-child-examined-in-its-child",
        "flushed-in-two-children",
    ],
)
def test_totals_equal_ground_truth_with_duplicates_batches_binary_and_late_events(stack, placement):
    workload = generate(4000, customers=60, late_events=50, bad_records=7, seed=11)
    worker = stack.start_worker(**placement)
    ends = publish(stack, workload.records)
    stack.wait_caught_up(ends)
    # clickhouse-connect would import pandas (80 MB) and numpy (10 MB) at the first insert of
    # each process that writes: the worker and every process it started are asked not to
    # (skip_numpy_and_pandas_imports). The stack's ClickHouse is a server, so nothing else here
    # imports numpy (chdb in a process would).
    processes = [worker.pid, *descendants(worker.pid)]
    flush_processes = (
        int(placement.get("BASTIONARY_FLUSH_PROCESSES", "1")) if "BASTIONARY_FLUSH_PROCESS" in placement else 0
    )
    # Counted by their start, not among the descendants: a flush process's examine pool (and
    # multiprocessing's resource tracker with it) are processes of its own.
    assert stack.worker_log("w1").count('"flush process started"') == flush_processes
    assert len(processes) >= 1 + flush_processes
    maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in processes}
    assert [pid for pid, mapped in maps.items() if "/pandas/" in mapped or "/numpy/" in mapped] == []

    assert_totals_equal(pipeline_totals(stack), workload.truth())
    stored = stack.query("SELECT count() FROM usage_events FINAL")[0][0]
    assert stored == len(workload.unique_events)
    progress = stack.query(
        "SELECT sum(events_accepted), sum(duplicates), sum(dead_lettered) FROM ingest_progress FINAL"
    )[0]
    assert tuple(int(v) for v in progress) == (len(workload.unique_events), workload.duplicates, 7)
    assert len(dead_letters(stack, expect=7)) == 7


def test_metrics_endpoint_counts_what_the_pipeline_did(stack):
    import urllib.request

    workload = generate(400, customers=10, duplicate_rate=0.25, bad_records=3, seed=9)
    env = stack.env("w1")
    stack.start_worker("w1", BASTIONARY_WEB_PORT=env["BASTIONARY_WEB_PORT"])
    stack.wait_caught_up(publish(stack, workload.records))
    url = f"http://127.0.0.1:{env['BASTIONARY_WEB_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["bastionary_usage_events_accepted_total"] == 400
    assert values["bastionary_usage_events_duplicate_total"] == workload.duplicates
    assert sum(v for k, v in values.items() if k.startswith("bastionary_usage_dead_lettered_total")) == 3
    assert values["bastionary_usage_records_received_total"] >= len(workload.records)
    assert any(k.startswith("bastionary_usage_consumer_lag{") for k in values)
    assert values["bastionary_usage_flush_seconds_count"] >= 1


def test_late_event_for_an_already_flushed_window_counts_once(stack):
    stack.start_worker()
    minute = (datetime.now(UTC) - timedelta(hours=3)).replace(second=5, microsecond=0)

    def event(i: int, tokens: int) -> Record:
        body = {
            "specversion": "1.0",
            "id": f"late-{i}",
            "source": "test",
            "type": "llm.completion",
            "subject": "cust-late",
            "time": minute.isoformat(),
            "data": {"tokens": tokens, "model": "gpt-4"},
        }
        return Record(b"cust-late", orjson.dumps(body))

    stack.wait_caught_up(publish(stack, [event(1, 100)]))
    stack.wait_caught_up(publish(stack, [event(2, 20), event(1, 100)]))  # a late one and a repeat
    rows = stack.query("SELECT sum(value_sum) FROM usage_rollup_1m WHERE customer_id = 'cust-late'")
    assert rows[0][0] == 120


def test_restarted_worker_with_an_empty_cache_still_drops_repeats(stack):
    workload = generate(500, customers=10, duplicate_rate=0, seed=3)
    stack.start_worker("first")
    stack.wait_caught_up(publish(stack, workload.records))
    stack.kill_worker("first")
    # A new worker id means a new, empty local dedupe cache: it must be refilled from ClickHouse.
    stack.start_worker("second")
    stack.wait_caught_up(publish(stack, workload.records))
    assert stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 500
    assert_totals_equal(pipeline_totals(stack), workload.truth())


def test_usage_and_sql_commands_read_the_live_pipeline(stack):
    workload = generate(300, customers=5, duplicate_rate=0, seed=5)
    stack.start_worker()
    stack.wait_caught_up(publish(stack, workload.records))
    env = stack.env("cli")
    out = subprocess.run(
        [".venv/bin/bastionary", "usage", "llm_tokens", "--group-by", "model", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    assert rows and set(rows[0]) == {"customer_id", "window_start", "window_end", "group", "value"}
    truth = workload.truth()["llm_tokens"]
    assert {(r["customer_id"], (("model", r["group"]["model"]),)): r["value"] for r in rows} == {
        k: format(v, "f") for k, v in truth.items()
    }
    out = subprocess.run(
        [".venv/bin/bastionary", "sql", "SELECT count() AS n FROM usage_events", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [{"n": 300}]
    outfile = stack.tmp_path / "written.txt"
    for statement, says in [
        ("DROP TABLE usage_events", "DROP is not a read"),
        (f"SELECT 1 INTO/**/OUTFILE '{outfile}'", "INTO OUTFILE writes a file"),
        ("SELECT file('/etc/hostname')", "function file() reads the host"),
        ("SELECT 1; DROP TABLE usage_events", "Multi-statements are not allowed"),
        ("SELEC 1", "Syntax error"),
    ]:
        denied = subprocess.run([".venv/bin/bastionary", "sql", statement], env=env, capture_output=True, text=True)
        assert denied.returncode == 1 and says in denied.stderr, (statement, denied.stderr)
        assert denied.stderr.count("\n") == 1  # one line, no traceback
    assert not outfile.exists()
    assert stack.query("SELECT count() FROM usage_events")[0][0] == 300
