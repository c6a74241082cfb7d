"""``bastionary bench``: the pipeline measured against its targets on the embedded stack.

Everything runs on a stack the benchmark starts and tears down itself: one embedded broker
(Tansu) and, per phase, one ``bastionary worker`` subprocess with a fresh data dir (so it
holds chdb in-process and serves the query gateway), a fresh topic prefix and a fresh
consumer group. The phases:

(a) bare Faust ceiling: :mod:`bastionary.worker.bare_agent` (one agent that only counts) reads
    the single-event records of (b); records/s from the first to the last record counted.
(a') same-run references on each workload of (b), see :mod:`bastionary.tools.bench.references`:
    aiokafka's transport ceiling, the hand-written loop a user would write, and ClickHouse's
    Kafka table engine in chdb (no dedupe: its over-count is reported; if it fails to run,
    its error is, and the bench goes on).
(b) pipeline throughput: the same workload as single-event records, then packed into
    100-event batch records; pre-published, then a worker started on it; timed from its
    first consumed record to "caught up" (committed offsets at the log end).
(c) end-to-end latency: events produced at half the batch maximum of (b), in 100-event
    records, each polled for in ``usage_events`` through the gateway; visible time minus
    produce time.
(d) peak RSS (VmHWM) of a worker that has ingested ``dedupe_ids`` distinct ids.
(e) exactness: ClickHouse totals of (b) and (d) against the workload's ground truth.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bastionary.devstack.broker import EmbeddedBroker
from bastionary.tools.bench.options import BATCH_EVENTS, BenchError, BenchOptions
from bastionary.tools.bench.phases import _bare_ceiling, _latency, _peak_rss, _reference, _throughput
from bastionary.tools.bench.processes import _Processes, _say, _sigterm_as_interrupt, bench_directory
from bastionary.tools.bench.report import _verdicts, machine_info, render
from bastionary.tools.bench.stack import _Bench
from bastionary.tools.bench.workloads import _batched
from bastionary.tools.workload import generate

KAFKA_ENGINE_TIMEOUT_S = 240.0  # a group join takes ~4 s and the run seconds; a stuck engine must not hold the bench

__all__ = ["BenchError", "BenchOptions", "machine_info", "render", "run_bench"]


# -- the benchmark ---------------------------------------------------------------------------


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every phase on a fresh embedded stack; returns the figures (see :func:`render`)."""
    started = time.monotonic()
    processes = _Processes()
    result: dict[str, Any] = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}}
    result["machine"] = machine_info()
    with bench_directory("bastionary-bench-", options.data_dir) as root:
        try:
            with _sigterm_as_interrupt():
                broker = EmbeddedBroker(root / "broker")
                try:
                    broker.start()
                    bench = _Bench(
                        root,
                        processes,
                        broker,
                        options.profile_dir,
                        options.worker_settings,
                        options.clickhouse_server,
                    )
                    result["event_loop"] = bench.event_loop
                    result.update(_run_phases(bench, options))
                finally:
                    processes.stop_all()
                    broker.stop()
        finally:
            processes.stop_all()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _run_phases(bench: _Bench, options: BenchOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    timeout = max(300.0, options.events / 200)
    cpu = bench.cpu

    _say(f"generating {options.events:,} events (10% repeats) as single-event records")
    workload = generate(options.events, single_only=True)
    singles = workload.records
    prefix, group = bench.names("single")
    topic = bench.create_topics(prefix)
    _say(f"publishing {len(singles):,} records to {topic}")
    ends = bench.publish(topic, singles)

    _say("(a) bare Faust ceiling")
    with cpu.phase("bare"):
        out["bare"] = _bare_ceiling(bench, topic, len(singles), timeout)
    _say(f"    {out['bare']['records_per_s']:,} records/s")

    references: dict[str, dict[str, Any]] = {"transport": {}, "handwritten": {}, "kafkaengine": {}}
    total_events = sum(r.events for r in singles)

    def run_references(workload: str, topic: str, records: int) -> None:
        for kind in references:
            limit = KAFKA_ENGINE_TIMEOUT_S if kind == "kafkaengine" else timeout
            try:
                with cpu.phase(f"{kind}_{workload}"):
                    figures = references[kind][workload] = _reference(
                        bench, kind, workload, topic, records, total_events, limit
                    )
            except BenchError as error:
                if kind != "kafkaengine":
                    raise
                # ClickHouse's engine is a reference "where it works": its failure is reported, not fatal.
                references[kind][workload] = {"error": str(error)[-2000:]}
                _say(f"    reference {kind}, {workload} records: did not run ({str(error).splitlines()[0]})")
                continue
            overcount = f", {figures['overcount']:,} repeats stored" if "overcount" in figures else ""
            _say(
                f"    reference {kind}, {workload} records: {figures['records_per_s']:,} records/s,"
                f" {figures['events_per_s']:,} events/s{overcount}"
            )

    run_references("single", topic, len(singles))

    _say("(b) pipeline, single-event records")
    with cpu.phase("single"):
        single, single_exact = _throughput(bench, "single", prefix, group, singles, ends, workload, timeout)
    single["ratio_to_bare"] = round(single["records_per_s"] / max(out["bare"]["records_per_s"], 1), 3)
    out["single"] = single
    _say(f"    {single['records_per_s']:,} records/s ({single['ratio_to_bare']}x bare)")

    _say(f"(b) pipeline, {BATCH_EVENTS}-event batch records")
    batches = _batched(singles, BATCH_EVENTS)
    prefix, group = bench.names("batch")
    topic = bench.create_topics(prefix)
    ends = bench.publish(topic, batches)
    run_references("batch", topic, len(batches))
    with cpu.phase("batch"):
        batch, batch_exact = _throughput(bench, "batch", prefix, group, batches, ends, workload, timeout)
    single["ratio_to_handwritten"] = round(
        single["records_per_s"] / max(references["handwritten"]["single"]["records_per_s"], 1), 3
    )
    batch["ratio_to_handwritten"] = round(
        batch["events_per_s"] / max(references["handwritten"]["batch"]["events_per_s"], 1), 3
    )
    out["batch"] = batch
    out["references"] = references
    _say(f"    {batch['events_per_s']:,} events/s ({batch['ratio_to_handwritten']}x the hand-written loop)")
    del workload, singles, batches

    # At half the measured maximum, in the shape that maximum was measured in: batch records.
    rate = max(20.0, min(out["batch"]["events_per_s"] / 2, 500_000.0))
    _say(
        f"(c) end-to-end latency at {rate:,.0f} events/s in {BATCH_EVENTS}-event records"
        f" for {options.latency_seconds:g} s"
    )
    with cpu.phase("latency"):
        out["latency"] = _latency(bench, rate, options.latency_seconds, BATCH_EVENTS)
    _say(f"    p50 {out['latency']['p50_s']} s, p99 {out['latency']['p99_s']} s")

    _say(f"(d) worker peak RSS with {options.dedupe_ids:,} distinct ids")
    with cpu.phase("rss"):
        out["rss"], rss_exact = _peak_rss(bench, options.dedupe_ids, max(300.0, options.dedupe_ids / 200))
    _say(f"    VmHWM {out['rss']['vmhwm_mb']} MB (chdb in the worker)")
    with cpu.phase("rss_http"):
        out["rss_http"], rss_http_exact = _peak_rss(
            bench, options.dedupe_ids, max(300.0, options.dedupe_ids / 200), over_http=True
        )
    _say(f"    VmHWM {out['rss_http']['vmhwm_mb']} MB (ClickHouse over HTTP)")

    runs = {"single": single_exact, "batch": batch_exact, "rss": rss_exact, "rss_http": rss_http_exact}
    out["exact"] = all(r["exact"] for r in runs.values())
    out["mismatches"] = {name: sum(r["mismatches"].values()) for name, r in runs.items()}
    out["exactness"] = runs
    out["targets"] = _verdicts(out, options)
    out["contention"] = cpu.phases
    return out
