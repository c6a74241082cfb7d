"""``bastionary bench`` in quick mode: it runs every phase end to end and the totals are exact.

Only the shape of the result is checked, never a figure against a target: timings on a
shared CI machine say nothing about the pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bastionary.tools.bench import BenchOptions, render, run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_bench_runs_every_phase_and_is_exact(tmp_path):
    options = BenchOptions(quick=True, data_dir=tmp_path / "bench", profile_dir=tmp_path / "profiles")
    assert (options.events, options.dedupe_ids, options.latency_seconds) == (20_000, 50_000, 5.0)

    result = run_bench(options)

    assert result["exact"] is True, json.dumps(result["exactness"], indent=2)
    assert set(result["mismatches"]) == {"single", "batch", "rss", "rss_http"}
    assert all(count == 0 for count in result["mismatches"].values())
    for run in ("single", "batch", "rss", "rss_http"):
        details = result["exactness"][run]
        assert details["stored_events"] == details["expected_events"] > 0

    assert result["bare"]["records"] == result["single"]["records"] == 22_000  # 20k events + 10% repeats
    assert result["bare"]["records_per_s"] > 0
    for run in ("single", "batch"):
        figures = result[run]
        assert figures["events"] == 22_000
        assert figures["records_per_s"] > 0 and figures["events_per_s"] > 0 and figures["seconds"] > 0
    assert result["batch"]["records"] < result["single"]["records"]
    assert result["single"]["ratio_to_bare"] > 0

    latency = result["latency"]
    assert latency["events"] > 0 and latency["missing"] == 0 and latency["seen"] == latency["events"]
    assert 0 <= latency["p50_s"] <= latency["p99_s"] <= latency["max_s"]

    for name in ("rss", "rss_http"):
        rss = result[name]
        assert rss["distinct_ids"] == 50_000
        assert rss["vmhwm_mb"] >= rss["vmrss_mb"] > 0
        assert rss["dedupe_disk_bytes_per_id"] > 0

    references = result["references"]
    for kind in ("transport", "handwritten"):
        for run in ("single", "batch"):
            assert references[kind][run]["records_per_s"] > 0 and references[kind][run]["events"] == 22_000
    # The hand-written loop's set catches the repeats too (it keeps them only while it runs).
    assert references["handwritten"]["single"]["duplicates_dropped"] == 2_000
    assert result["batch"]["ratio_to_handwritten"] > 0
    # ClickHouse's Kafka engine consumes the same records and stores every repeat: the over-count
    # the bench reports beside its rate (chdb and the broker pinned here do run it).
    for run in ("single", "batch"):
        engine = references["kafkaengine"][run]
        assert "error" not in engine, engine.get("error")
        assert engine["records_per_s"] > 0 and engine["events_per_s"] > 0
        assert engine["stored_events"] == engine["rollup_events"] == 22_000
        assert engine["overcount"] == 2_000

    assert set(result["targets"]) == {
        "single_ratio", "batch_events_per_s", "batch_vs_handwritten", "latency_p99_s", "rss_mb", "exact",
    }  # fmt: skip
    assert all(isinstance(t["pass"], bool) for t in result["targets"].values())
    assert result["targets"]["exact"]["pass"] is True
    assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]

    table = render(result, as_json=False)
    assert "bare Faust ceiling" in table and "p99" in table and "VmHWM" in table and "hand-written" in table
    assert "Kafka engine" in table and "+2,000 repeats kept" in table
    # --profile: one py-spy profile per worker the bench started.
    profiles = sorted(p.name for p in (tmp_path / "profiles").iterdir())
    phases = ("batch", "latency", "rss", "rss-http", "single")
    assert profiles == sorted(f"worker-{phase}.speedscope.json" for phase in phases)
    assert all(json.loads((tmp_path / "profiles" / name).read_text())["profiles"] for name in profiles)
    assert json.loads(render(result, as_json=True))["exact"] is True
    # The data dir it was given is kept, and nothing it started is left running.
    assert (tmp_path / "bench").is_dir()
    assert _processes_mentioning(str(tmp_path)) == []


def _processes_mentioning(text: str) -> list[int]:
    """Our processes whose command line or environment names ``text`` (workers, the bare app)."""
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
