"""``bastionary bench --entitlements`` in quick mode: every phase runs end to end on its own stack.

Only the shape and the sanity of the figures are checked, never a figure against a target:
timings on a shared CI machine say nothing about the check API.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_entitlements_bench_reports_latency_and_freshness(tmp_path):
    # The bench makes its temp dir (broker, worker data, catalog) under TMPDIR: here, so
    # whatever it leaves running or lying around afterwards can be found.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")} | {"TMPDIR": str(tmp_path)}
    run = subprocess.run(
        [str(BIN), "bench", "--entitlements", "--quick", "--json", "--ingest-rate", "2000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)

    options = result["options"]
    assert options["quick"] is True
    assert (options["customers"], options["trial_customers"]) == (50, 5)
    assert options["check_rate_per_s"] == 1_000 and options["flush_interval"] == "PT0.25S"
    assert options["worker_settings"] == {}
    assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]
    assert result["warmup"]["customers"] == 55

    serial = result["latency_serial"]
    assert serial["requests"] > 0 and serial["errors"] == 0
    assert 0 < serial["p50_ms"] <= serial["p99_ms"] <= serial["max_ms"]

    for name in ("latency", "latency_under_load"):
        latency = result[name]
        assert latency["requests"] == 2_000, name
        assert latency["errors"] == 0 and latency["statuses"] == {"200": 2_000}, latency
        assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        assert latency["from_send_p50_ms"] <= latency["p50_ms"]  # the scheduled time is never after the send
        assert latency["rate"] > 0 and isinstance(latency["met"], bool)
        assert latency["worker_cpu_cores"] > 0 and latency["worker_cpu_ms_per_check"] > 0
        assert latency["worker_children_cpu_cores"] == 0  # no EXAMINE_PROCESSES: the worker has no children
    assert result["latency"]["background_events_per_s"] == 0 and result["latency"]["target_p99_ms"] == 5.0
    assert result["latency_under_load"]["background_events_per_s"] == 2_000
    assert result["latency_under_load"]["target_p99_ms"] == 10.0
    assert options["background_events_per_record"] == 100

    freshness = result["freshness"]
    assert freshness["trials"] == freshness["flipped"] == 5 and freshness["missing"] == 0
    assert 0 < freshness["min_s"] <= freshness["p50_s"] <= freshness["p99_s"] <= freshness["max_s"]
    assert freshness["from_ack_p50_s"] <= freshness["p50_s"]
    assert freshness["target_p99_s"] == 1.0 and isinstance(freshness["met"], bool)
    assert freshness["background_events_per_s"] == 2_000 and freshness["background_achieved_per_s"] > 0
    assert freshness["flushes"] > 0

    background = result["background"]
    assert background["events"] > 0 and background["caught_up_after_stop_s"] is not None

    assert set(result["targets"]) == {"check_latency_p99_ms", "check_latency_under_load_p99_ms", "freshness_p99_s"}
    assert result["targets"]["check_latency_p99_ms"]["met"] == result["latency"]["met"]
    assert result["targets"]["check_latency_under_load_p99_ms"]["met"] == result["latency_under_load"]["met"]
    assert result["targets"]["freshness_p99_s"]["met"] == freshness["met"]
    assert set(result["contention"]) == {"latency", "latency_under_load", "freshness"}

    from bastionary.tools.bench.entitlements import render_entitlements

    table = render_entitlements(result, as_json=False)
    assert "check latency" in table and "freshness" in table and ("MET" in table or "MISSED" in table)
    assert "worker settings" in table and "defaults" in table
    assert json.loads(render_entitlements(result, as_json=True)) == result

    # Torn down: no process left naming its dir, and the temp dir itself removed.
    assert _processes_mentioning(str(tmp_path)) == []
    assert not list(tmp_path.glob("bastionary-bench-ent-*"))


def test_a_worker_setting_reaches_the_measured_worker(tmp_path):
    # examine_processes=1 gives the worker a child that examines the ingested records: its
    # CPU shows only if the setting reached the worker the bench started.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")} | {"TMPDIR": str(tmp_path)}
    command = [str(BIN), "bench", "--entitlements", "--quick", "--json", "--ingest-rate", "2000"]
    run = subprocess.run(
        [*command, "--worker-setting", "examine_processes=1"], env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)

    assert result["options"]["worker_settings"] == {"BASTIONARY_EXAMINE_PROCESSES": "1"}
    assert result["latency"]["worker_children_cpu_cores"] >= 0
    assert result["latency_under_load"]["worker_children_cpu_cores"] > 0
    assert result["freshness"]["worker_children_cpu_cores"] > 0

    from bastionary.tools.bench.entitlements import render_entitlements

    assert "BASTIONARY_EXAMINE_PROCESSES=1" in render_entitlements(result, as_json=False)
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_worker_setting_the_bench_owns_or_does_not_know_is_refused():
    for setting, reason in (
        ("data_dir=/elsewhere", "the bench sets 'data_dir'"),
        ("examine_processess=1", "is not a worker setting"),
        ("examine_processes", "NAME=VALUE"),
    ):
        run = subprocess.run(
            [str(BIN), "bench", "--entitlements", "--worker-setting", setting], capture_output=True, text=True
        )
        assert run.returncode == 2 and reason in run.stderr, run.stderr


def _processes_mentioning(text: str) -> list[int]:
    """Our processes whose command line or environment names ``text`` (the worker, the broker)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if text.encode() in blob:
            found.append(int(proc.name))
    return found
