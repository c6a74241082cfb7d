"""The verdicts against the targets, the machine, and the output (table or JSON)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastionary.tools.bench.options import (
    BATCH_EVENTS,
    CONTENTION_WARNING,
    LATENCY_POLL_SECONDS,
    TARGET_BATCH_EVENTS_PER_S,
    TARGET_HANDWRITTEN_RATIO,
    TARGET_P99_S,
    TARGET_RSS_IDS,
    TARGET_RSS_MB,
    TARGET_SINGLE_RATIO,
    BenchOptions,
)

if TYPE_CHECKING:
    from rich.console import Console  # imported where used: the JSON output does without rich

# -- machine ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "ram_gb": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    from importlib.metadata import PackageNotFoundError, version

    for package in ("faust-streaming", "aiokafka", "chdb", "clickhouse-connect", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    return info


# -- verdicts --------------------------------------------------------------------------------


def _verdicts(out: dict[str, Any], options: BenchOptions) -> dict[str, dict[str, Any]]:
    return {
        "single_ratio": {
            "target": f">= {TARGET_SINGLE_RATIO}x bare",
            "pass": out["single"]["ratio_to_bare"] >= TARGET_SINGLE_RATIO,
        },
        "batch_events_per_s": {
            "target": f">= {TARGET_BATCH_EVENTS_PER_S:,} events/s",
            "pass": out["batch"]["events_per_s"] >= TARGET_BATCH_EVENTS_PER_S,
        },
        "batch_vs_handwritten": {
            "target": f">= {TARGET_HANDWRITTEN_RATIO}x the hand-written loop",
            "pass": out["batch"].get("ratio_to_handwritten", 0) >= TARGET_HANDWRITTEN_RATIO,
        },
        "latency_p99_s": {
            "target": f"<= {TARGET_P99_S:g} s",
            "pass": out["latency"]["missing"] == 0 and out["latency"]["p99_s"] <= TARGET_P99_S,
        },
        "rss_mb": {
            "target": f"<= {TARGET_RSS_MB} MB with {TARGET_RSS_IDS:,} ids, writing to ClickHouse over HTTP",
            # Only a run with at least the target's ids can meet it.
            "pass": out["rss_http"]["total_vmhwm_mb"] <= TARGET_RSS_MB and options.dedupe_ids >= TARGET_RSS_IDS,
        },
        "exact": {"target": "true", "pass": out["exact"]},
    }


# -- output ----------------------------------------------------------------------------------


def render(result: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2, default=str)
    from rich.console import Console
    from rich.table import Table

    output = io.StringIO()
    # 132 columns: the labels and the measured figures never wrap (scripts and tests grep them),
    # and only the target column folds, around whole words.
    console = Console(file=output, width=132, color_system=None, force_terminal=False)
    targets = result.get("targets", {})

    def verdict(name: str) -> str:
        if name not in targets:
            return ""
        return "PASS" if targets[name]["pass"] else "FAIL"

    bare, single, batch = result["bare"], result["single"], result["batch"]
    latency, rss, rss_http = result["latency"], result["rss"], result["rss_http"]
    table = Table(title="bastionary bench", title_justify="left")
    table.add_column("figure", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("target")
    table.add_column("", justify="center", no_wrap=True)
    table.add_row(
        "bare Faust ceiling (count only)",
        f"{bare['records_per_s']:,} records/s",
        f"({bare['records']:,} records in {bare['seconds']:.1f} s)",
        "",
    )
    table.add_row(
        "pipeline, single-event records",
        f"{single['records_per_s']:,} records/s\n= {single['ratio_to_bare']:.2f}x bare",
        f">= {TARGET_SINGLE_RATIO}x bare = {round(TARGET_SINGLE_RATIO * bare['records_per_s']):,} records/s",
        verdict("single_ratio"),
    )
    table.add_row(
        f"pipeline, {BATCH_EVENTS}-event batch records",
        f"{batch['events_per_s']:,} events/s\n({batch['records_per_s']:,} records/s)",
        f">= {TARGET_BATCH_EVENTS_PER_S:,} events/s per worker",
        verdict("batch_events_per_s"),
    )
    references = result.get("references", {})
    if "handwritten" in references:
        handwritten = references["handwritten"]
        table.add_row(
            "pipeline / hand-written loop, batch",
            f"{batch['ratio_to_handwritten']:.2f}x\n({handwritten['batch']['events_per_s']:,} events/s by hand)",
            f">= {TARGET_HANDWRITTEN_RATIO}x the hand-written loop",
            verdict("batch_vs_handwritten"),
        )
    labels = {
        "transport": "aiokafka getmany, count only",
        "handwritten": "hand-written loop",
        "kafkaengine": "ClickHouse Kafka engine",
    }
    for kind, label in labels.items():
        if kind in references:
            table.add_row(f"reference: {label}", *_reference_cells(references[kind]), "")
    missing = f", {latency['missing']} never seen" if latency["missing"] else ""
    table.add_row(
        "end-to-end latency p50 / p99",
        f"{latency['p50_s']:.3f} s / {latency['p99_s']:.3f} s",
        f"p99 <= {TARGET_P99_S:g} s (at {latency['target_rate_per_s']:,} events/s"
        f" in {latency.get('events_per_record', 1)}-event records{missing})",
        verdict("latency_p99_s"),
    )
    table.add_row(
        "worker peak RSS (VmHWM), ClickHouse over HTTP",
        f"{rss_http['total_vmhwm_mb']:,.0f} MB\nwith {rss_http['distinct_ids']:,} ids"
        + (
            f"\n({rss_http['children']} child processes: {rss_http['children_vmhwm_mb']:,.0f} MB)"
            if rss_http["children"]
            else ""
        ),
        f"<= {TARGET_RSS_MB} MB with {TARGET_RSS_IDS:,} distinct ids",
        verdict("rss_mb"),
    )
    table.add_row(
        "worker peak RSS (VmHWM), chdb in the worker",
        f"{rss['vmhwm_mb']:,.0f} MB\nwith {rss['distinct_ids']:,} ids",
        "(the embedded default; see rss below)",
        "",
    )
    mismatches = ", ".join(f"{k} {v}" for k, v in result["mismatches"].items())
    table.add_row(
        "exact totals vs ground truth",
        str(result["exact"]).lower(),
        f"true (mismatched keys: {mismatches})",
        verdict("exact"),
    )
    console.print(table)

    details = Table(title="runs", title_justify="left")
    columns = ("run", "records", "events", "ev/record", "seconds", "records/s", "events/s", "flushes", "largest flush")
    for column in columns + ("start-up", "cores busy", "landed: s, events/s"):
        details.add_column(column, justify="right" if column != "run" else "left")
    for name, run in (("single", single), ("batch", batch)):
        details.add_row(
            name, f"{run['records']:,}", f"{run['events']:,}", f"{run['events_per_record']}",
            f"{run['seconds']:.2f}", f"{run['records_per_s']:,}", f"{run['events_per_s']:,}",
            str(run["flushes"]), f"{run['max_flush_events']:,} ev", f"{run['startup_s']:.1f} s",
            _share(run.get("machine_busy_share")), _landed(run),
        )  # fmt: skip
    console.print(details)
    console.print(f"timing: {single['timing']}; start-up (process, chdb, group join) excluded")
    console.print("cores busy: the whole machine's busy share over the timed span (below 1: the run waited)")
    for name, run in (("single", single), ("batch", batch)):
        if run.get("cpu_by_part"):
            console.print(f"cores by part, {name}: {_parts(run['cpu_by_part'])}")
    console.print(
        "landed: to the last event landed (the worker's /metrics), not to the commit, which comes once a second"
    )
    console.print(
        f"latency: {latency['events']:,} events over {latency['seconds']:.1f} s"
        f" ({latency['achieved_rate_per_s']:,}/s), max {latency['max_s']} s;"
        f" gateway polled every {LATENCY_POLL_SECONDS * 1000:.0f} ms"
        f" (round trip p50 {latency.get('poll_round_trip_ms_p50')} ms, p99 {latency.get('poll_round_trip_ms_p99')} ms)"
    )
    for name, run, backed in (("rss", rss, "chdb's library"), ("rss over HTTP", rss_http, "the interpreter's")):
        extra = f", ingest {run['ingest_events_per_s']:,} events/s" if "ingest_events_per_s" in run else ""
        console.print(
            f"{name}: at the end (after {run['repeats_sent']:,} repeats) VmRSS {run['vmrss_mb']:,.0f} MB ="
            f" {run['rss_anon_mb']:,.0f} MB anonymous + {run['rss_file_mb']:,.0f} MB file-backed ({backed});"
            f" {run['flushes']} flushes, the largest {run['max_flush_events']:,} events{extra};"
            f" dedupe store {run.get('dedupe_disk_bytes_per_id', '?')} bytes per id on disk"
        )

    print_contention_and_machine(console, result, "the pipeline")
    return output.getvalue().rstrip()


def print_contention_and_machine(console: Console, result: dict[str, Any], measured: str) -> None:
    """The CPU each phase had and the machine: both benchmarks end their report with them."""
    from rich.table import Table

    contention = result.get("contention") or {}
    if contention:
        busy = Table(title="CPU during each phase (share of all cores)", title_justify="left")
        for column in ("phase", "seconds", "bench + its children", "other processes", "load avg 1m"):
            busy.add_column(column, justify="left" if column == "phase" else "right")
        for name, phase in contention.items():
            busy.add_row(
                name, f"{phase['seconds']:.0f}", f"{phase['bench_cpu_share']:.0%}",
                f"{phase['others_cpu_share']:.0%}", f"{phase['load_avg_1m']:.2f}",
            )  # fmt: skip
        console.print(busy)
        noisy = [n for n, p in contention.items() if p["others_cpu_share"] > CONTENTION_WARNING]
        if noisy:
            console.print(
                f"WARNING: other processes used more than {CONTENTION_WARNING:.0%} of the machine during"
                f" {', '.join(noisy)}: those figures understate {measured}; rerun on a quiet machine."
            )

    machine = result["machine"]
    info = Table(title="machine", title_justify="left", show_header=False)
    info.add_column("key")
    info.add_column("value")
    info.add_row("nproc", str(machine.get("nproc")))
    info.add_row("CPU", str(machine.get("cpu_model")))
    info.add_row("RAM", f"{machine.get('ram_gb')} GB")
    info.add_row("python", str(machine.get("python")))
    versions = ", ".join(f"{p} {machine[p]}" for p in ("faust-streaming", "aiokafka", "chdb", "uvloop") if p in machine)
    info.add_row("packages", versions)
    info.add_row("event loop", str(result.get("event_loop", "asyncio")))  # the workers' and the references'
    quick = " (quick sizes)" if result["options"].get("quick") else ""
    info.add_row("elapsed", f"{result.get('elapsed_s', 0):.0f} s{quick}")
    settings = result["options"].get("worker_settings")
    info.add_row(
        "worker settings", ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) if settings else "defaults"
    )
    # --entitlements names where ClickHouse ran; the full bench records only whether a server did.
    where = result["options"].get("clickhouse") or (
        "a server over HTTP per phase"
        if result["options"].get("clickhouse_server")
        else "chdb in the worker (rss over HTTP aside)"
    )
    info.add_row("ClickHouse", where)
    console.print(info)


def _reference_cells(runs: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """A reference's measured cell and its note: rates, repeats it stored, or why it did not run."""
    cells, notes = [], []
    for workload, unit, rate in (("single", "records/s", "records_per_s"), ("batch", "events/s", "events_per_s")):
        figures = runs.get(workload, {})
        if rate not in figures:
            cells.append(f"did not run ({workload})")
            notes.append(str(figures.get("error", "no figures")).splitlines()[0][:80])
            continue
        cells.append(f"{figures[rate]:,} {unit} {workload}")
        if "overcount" in figures:
            notes.append(f"{workload}: +{figures['overcount']:,} repeats kept")
    return "\n".join(cells), "\n".join(notes) or "(same run, same records)"


def _landed(run: Mapping[str, Any]) -> str:
    seconds, rate = run.get("landed_seconds"), run.get("landed_events_per_s")
    return "-" if seconds is None or rate is None else f"{seconds:.2f}, {rate:,}"


def _parts(parts: Mapping[str, float]) -> str:
    """Each part's CPU over the timed span, in cores (1.00: one core flat out)."""
    return ", ".join(f"{part.replace('_', ' ')} {cores:.2f}" for part, cores in parts.items())


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
