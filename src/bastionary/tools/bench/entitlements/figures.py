"""Percentiles, verdicts against the targets, and the report of ``bench --entitlements``."""

from __future__ import annotations

import io
import json
from typing import Any

from bastionary.tools.bench.entitlements.constants import (
    CHECK_RATE,
    TARGET_CHECK_P99_MS,
    TARGET_CHECK_UNDER_LOAD_P99_MS,
    TARGET_FRESHNESS_P99_S,
)
from bastionary.tools.bench.report import print_contention_and_machine

Figures = dict[str, Any]  # a phase's results, JSON-shaped as ``--json`` prints them

# -- figures ---------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = q * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _ms(sorted_values: list[float], q: float) -> float | None:
    return round(1000 * _percentile(sorted_values, q), 2) if sorted_values else None


def _seconds(sorted_values: list[float], q: float) -> float | None:
    return round(_percentile(sorted_values, q), 3) if sorted_values else None


def _verdicts(out: Figures) -> dict[str, dict[str, Any]]:
    return {
        "check_latency_p99_ms": {
            "target": f"<= {TARGET_CHECK_P99_MS:g} ms at {CHECK_RATE:,} checks/s",
            "met": out["latency"]["met"],
        },
        "check_latency_under_load_p99_ms": {
            "target": f"<= {TARGET_CHECK_UNDER_LOAD_P99_MS:g} ms at {CHECK_RATE:,} checks/s while"
            f" {out['latency_under_load']['background_events_per_s']:,} usage events/s are ingested",
            "met": out["latency_under_load"]["met"],
        },
        "freshness_p99_s": {
            "target": f"<= {TARGET_FRESHNESS_P99_S:g} s under {out['freshness']['background_events_per_s']:,} events/s",
            "met": out["freshness"]["met"],
        },
    }


# -- output ----------------------------------------------------------------------------------


def _backlog_text(figures: Figures) -> str:
    """The worker's backlog in a phase (tools/bench/entitlements/backlog.py), if sampled."""
    if "backlog_max_records" not in figures:
        return ""
    missed = figures.get("backlog_samples_missed")
    return (
        f"; records not yet landed: max {figures['backlog_max_records']}, mean {figures.get('backlog_mean_records')}"
        + (f" ({missed} samples missed)" if missed else "")
    )


def _loop_lag_text(figures: Figures) -> str:
    """How late the worker's event loop ran in a phase (worker/loop_lag.py), if it said."""
    if "loop_lag_probes" not in figures:
        return ""
    return (
        f"; the worker's event loop late by {figures['loop_lag_mean_ms']} ms on average,"
        f" p99 <= {figures['loop_lag_p99_at_most_ms']} ms ({figures['loop_lag_probes']} probes)"
    )


def render_entitlements(result: Figures, as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2, default=str)
    from rich.console import Console
    from rich.table import Table

    output = io.StringIO()
    console = Console(file=output, width=110, color_system=None, force_terminal=False)
    options = result["options"]

    def verdict(met: bool) -> str:
        return "MET" if met else "MISSED"

    def latency_row(title: str, figures: Figures, judged: bool) -> None:
        errors = f", {figures['errors']} not 200" if figures["errors"] else ""
        table.add_row(
            title,
            f"{figures['p50_ms']} ms / {figures['p99_ms']} ms",
            f"p99 <= {figures['target_p99_ms']:g} ms ({figures['rate']:,} checks/s achieved{errors})",
            verdict(figures["met"]) + ("" if judged else " (info)"),
        )

    table = Table(title="bastionary bench --entitlements", title_justify="left")
    table.add_column("figure")
    table.add_column("p50 / p99", justify="right")
    table.add_column("target")
    table.add_column("", justify="center")
    latency_row("check latency, idle worker", result["latency"], True)
    if "latency_under_load" in result:
        loaded = result["latency_under_load"]
        latency_row(f"check latency, {loaded['background_events_per_s']:,} usage events/s ingested", loaded, True)
    fresh = result["freshness"]
    missing = f", {fresh['missing']} never flipped" if fresh["missing"] else ""
    table.add_row(
        "freshness: exhausting event -> has_access false",
        f"{fresh['p50_s']} s / {fresh['p99_s']} s",
        f"p99 <= {fresh['target_p99_s']:g} s ({fresh['trials']} trials under"
        f" {fresh['background_events_per_s']:,} events/s{missing})",
        verdict(fresh["met"]),
    )
    console.print(table)

    serial = result.get("latency_serial")
    if serial:
        console.print(
            f"one check at a time (no queueing): p50 {serial['p50_ms']} ms, p99 {serial['p99_ms']} ms"
            f" over {serial['requests']:,} checks; idle worker CPU {result.get('worker_idle_cpu_cores')} cores"
        )
    for name in ("latency", "latency_under_load"):
        figures = result.get(name)
        if figures:
            console.print(
                f"{name}: {figures['requests']:,} checks over {figures['seconds']:.1f} s; p90 {figures['p90_ms']} ms,"
                f" max {figures['max_ms']} ms; from the actual send p50 {figures['from_send_p50_ms']} ms,"
                f" p99 {figures['from_send_p99_ms']} ms; client scheduling lag p99 {figures['client_lag_p99_ms']} ms;"
                f" worker CPU {figures.get('worker_cpu_cores')} cores"
                f" ({figures.get('worker_cpu_ms_per_check')} ms per check; its children"
                f" {figures.get('worker_children_cpu_cores')} cores), bench CPU {figures.get('bench_cpu_cores')}"
                " cores"
                + (
                    f"; {figures['flushes']} flushes landed, mean {figures.get('flush_mean_s')} s"
                    if "flushes" in figures
                    else ""
                )
                + _backlog_text(figures)
                + _loop_lag_text(figures)
            )
    background = result.get("background", {})
    console.print(
        f"freshness: max {fresh['max_s']} s; from the broker ack p50 {fresh['from_ack_p50_s']} s,"
        f" p99 {fresh['from_ack_p99_s']} s; checks polled every {options['poll_interval_ms']:g} ms;"
        f" background {background.get('events', 0):,} events at {background.get('events_per_s', 0)}/s"
        f" (worker caught up {background.get('caught_up_after_stop_s')} s after the stream stopped);"
        f" {fresh.get('flushes', 0)} flushes landed during the trials, mean {fresh.get('flush_mean_s')} s,"
        f" p99 <= {fresh.get('flush_p99_at_most_s')} s; worker CPU {fresh.get('worker_cpu_cores')} cores"
        f" (its children {fresh.get('worker_children_cpu_cores')})" + _backlog_text(fresh) + _loop_lag_text(fresh)
    )
    console.print(
        f"setup: {options['customers']:,} steady + {options['trial_customers']} trial customers"
        f" (warm-up {result.get('warmup', {}).get('seconds')} s); flush interval {options['flush_interval']},"
        f" fetch max wait {options['kafka_fetch_max_wait']}, {options['partitions']} partitions, one worker"
    )
    console.print(f"timing: latency = {options['latency_timing']}; freshness = {options['freshness_timing']}")

    print_contention_and_machine(console, result, "the check API")
    return output.getvalue().rstrip()
