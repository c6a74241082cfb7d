"""The measuring phases: bare Faust ceiling, throughput, latency and peak RSS."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NotRequired, TypedDict

import orjson

from bastionary.storage import diagnostics
from bastionary.storage.client import Client
from bastionary.tools.bench.landed import LandedWatch
from bastionary.tools.bench.options import LATENCY_POLL_SECONDS, PARTITIONS, BenchError
from bastionary.tools.bench.processes import BusySampler, PartsCpu, _say, _tail, environment_without_settings
from bastionary.tools.bench.stack import _Bench, _Worker
from bastionary.tools.bench.workloads import Exactness, _distinct_id_records, _exactness
from bastionary.tools.workload import Record, Workload


class Throughput(TypedDict):
    """The figures of one throughput run (b)."""

    records: int
    events: int
    events_per_record: float
    seconds: float
    records_per_s: int
    events_per_s: int
    flushes: int
    max_flush_events: int
    startup_s: float
    timing: str
    machine_busy_share: float | None  # all cores' busy share over the timed span (BusySampler)
    # Over the same span, in cores: the worker, its children (flush processes), its ClickHouse
    # server (with --clickhouse-server) and the broker; the rest of the busy share is others'.
    cpu_by_part: dict[str, float] | None
    # To the last event landed, by the worker's /metrics (tools/bench/landed.py), not to the
    # commit after it: the commit comes once a second, so "seconds" moves in steps of one.
    landed_seconds: float | None
    landed_events_per_s: int | None
    commit_lag_s: float | None  # from the last event landed to the commit that the end mark saw
    ratio_to_bare: NotRequired[float]  # the single-event run's, set once both are known
    ratio_to_handwritten: NotRequired[float]  # to the hand-written loop on the same records


# -- phases ----------------------------------------------------------------------------------


def _bare_ceiling(bench: _Bench, topic: str, records: int, timeout: float) -> dict[str, float]:
    _, group = bench.names("bare")
    report = bench.root / "bare" / "result.json"
    command = [
        sys.executable, "-m", "bastionary.worker.bare_agent",
        "--bootstrap", bench.bootstrap, "--topic", topic, "--group", group,
        "--expect", str(records), "--report", str(report), "--partitions", str(PARTITIONS),
        "--event-loop", bench.event_loop,
    ]  # fmt: skip
    what = f"bare Faust app (counting {records} records)"
    result = _run_until_reported(bench, command, report, bench.root / "logs" / "bare.log", what, timeout)
    seconds = max(result["last"] - result["first"], 1e-6)
    return {"records": result["count"], "seconds": round(seconds, 3), "records_per_s": round(result["count"] / seconds)}


def _reference(
    bench: _Bench, kind: str, workload: str, topic: str, records: int, events: int, timeout: float
) -> dict[str, float]:
    """One same-run reference (see :mod:`bastionary.tools.bench.references`) over ``topic``."""
    _, group = bench.names(f"{kind}-{workload}")
    report = bench.root / kind / f"{group}.json"
    command = [
        sys.executable, "-m", "bastionary.tools.bench.references", kind,
        "--bootstrap", bench.bootstrap, "--topic", topic, "--group", group,
        "--expect-records", str(records), "--expect-events", str(events),
        "--report", str(report), "--data-dir", str(bench.root / kind / group),
        "--event-loop", bench.event_loop,
    ]  # fmt: skip
    what = f"reference {kind} (counting {records} records)"
    result = _run_until_reported(bench, command, report, bench.root / "logs" / f"{group}.log", what, timeout)
    seconds = max(result["last"] - result["first"], 1e-6)
    timed = events if kind == "transport" else result["events"] + result["duplicates"]
    figures = {
        "records": result["records"],
        "events": timed,
        "seconds": round(seconds, 3),
        "records_per_s": round(result["records"] / seconds),
        "events_per_s": round(timed / seconds),
        "duplicates_dropped": result["duplicates"],
    }
    if kind == "kafkaengine":
        # Its rates count what landed after its first block (see kafka_engine); the totals are
        # the whole run's, and it stores every repeat.
        stored = result["stored_events"]
        figures |= {"records": records, "events": events, "stored_events": stored}
        figures |= {"overcount": stored - result["distinct_events"], "rollup_events": result["rollup_events"]}
    return figures


def _run_until_reported(
    bench: _Bench, command: list[str], report: Path, log_path: Path, what: str, timeout: float
) -> dict[str, float]:
    """Run ``command`` (no BASTIONARY_* settings) until it writes ``report``; then stop it."""
    process = bench.processes.spawn(command, environment_without_settings(), log_path)
    try:
        deadline = time.monotonic() + timeout
        while not report.exists():
            if process.poll() is not None and not report.exists():
                raise BenchError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{what} did not finish in {timeout:.0f}s")
            time.sleep(0.1)
        result: dict[str, float] = json.loads(report.read_text())
    finally:
        bench.processes.stop(process)
    return result


def _throughput(
    bench: _Bench,
    phase: str,
    prefix: str,
    group: str,
    records: list[Record],
    ends: dict[int, int],
    workload: Workload,
    timeout: float,
) -> tuple[Throughput, Exactness]:
    """Start a worker on pre-published records; time it from its first record to caught up.

    Timing starts when the worker takes in its first record (its log says so, see
    ``_Worker.consumption_started``), so process start-up, chdb start-up, migrations and the
    consumer group join are left out, while the whole of consumption (including the first
    flush) is counted. The records are published before the worker starts so the producer
    does not compete with it for the two cores. The end is "caught up" as the project
    defines it: committed offsets at the log end (see ``_Bench.wait_caught_up``). Should the
    log mark be missing, the first ingest_progress row stands in (that excludes the first
    flush's records from the count as well, since they were consumed before it).
    """
    total_events = sum(r.events for r in records)
    parts = PartsCpu(bench.broker.pid)
    with BusySampler(parts=parts) as busy:
        worker = bench.start_worker(phase, prefix, group)
        parts.worker_pid = worker.process.pid
        if worker.clickhouse_server is not None:
            parts.server_pid = worker.clickhouse_server.pid
        try:
            with LandedWatch(worker.web_port, total_events) as landed:
                end = bench.wait_caught_up(worker, ends, timeout)
        except BaseException:
            bench.stop_worker(worker)
            raise
    try:
        client = worker.reader()
        total_records = len(records)
        start = worker.consumption_started()
        timing = "first record taken in -> committed at log end"
        counted_records, counted_events = total_records, total_events
        flushes = diagnostics.flushes(client)
        if start is None:
            first = diagnostics.first_flush(client)
            start = flushes.first_written_ms / 1000
            counted_records -= first.records
            counted_events -= first.events
            timing = "first flush marker -> committed at log end (first flush not counted)"
        seconds = max(end - start, 1e-6)
        landed_seconds = None if landed.landed_at is None else max(landed.landed_at - start, 1e-6)
        exactness = _exactness(client, workload)
        return {
            "records": total_records,
            "events": total_events,
            "events_per_record": round(total_events / max(total_records, 1), 1),
            "seconds": round(seconds, 3),
            "records_per_s": round(counted_records / seconds),
            "events_per_s": round(counted_events / seconds),
            "flushes": flushes.number,
            "max_flush_events": flushes.max_events,
            "startup_s": round(start - worker.started_at, 2),
            "timing": timing,
            "machine_busy_share": busy.share(start, end),
            "cpu_by_part": busy.part_shares(start, end),
            "landed_seconds": None if landed_seconds is None else round(landed_seconds, 3),
            "landed_events_per_s": None if landed_seconds is None else round(counted_events / landed_seconds),
            "commit_lag_s": None if landed.landed_at is None else round(end - landed.landed_at, 3),
        }, exactness
    finally:
        bench.stop_worker(worker)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = q * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _latency(bench: _Bench, rate: float, seconds: float, batch: int = 1) -> dict[str, float | None]:
    prefix, group = bench.names("latency")
    topic = bench.create_topics(prefix)
    worker = bench.start_worker("latency", prefix, group)
    try:
        client = worker.reader()
        return asyncio.run(_measure_latency(worker, client, bench.bootstrap, topic, rate, seconds, batch))
    finally:
        bench.stop_worker(worker)


async def _measure_latency(
    worker: _Worker, client: Client, bootstrap: str, topic: str, rate: float, seconds: float, batch: int = 1
) -> dict[str, float | None]:
    """Events at ``rate`` per second, in records of ``batch`` events of one customer each."""
    from bastionary.kafka import UsageProducer

    source = "bastionary-bench-latency"
    produced: dict[str, float] = {}  # id -> wall time just before it was handed to the producer
    visible: dict[str, float] = {}
    # Not yet visible, in send order: the oldest is the first (batch rates send hundreds of
    # thousands of ids; the poll must not walk them all every 50 ms on the measured cores).
    pending: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    poll_errors: list[str] = []
    round_trips: list[float] = []

    def poll() -> None:
        # Newly visible ids among the pending ones. ingested_at is the record's broker
        # timestamp (the producer's send time), so a window from the oldest pending send
        # (less a second of slack) keeps each answer to the ids still in flight.
        while not stop.is_set():
            with lock:
                oldest = next(iter(pending.values()), None)
            lo = int(((oldest if oldest is not None else time.time()) - 1.0) * 1000)
            asked = time.time()
            try:
                ids = diagnostics.visible_event_ids(client, source, lo)
            except Exception as exc:
                poll_errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                ids = []
            seen = time.time()  # the answer's arrival: an id counts as visible no earlier
            round_trips.append(seen - asked)
            with lock:
                for event_id in ids:
                    if event_id in produced and event_id not in visible:
                        visible[event_id] = seen
                        pending.pop(event_id, None)
            stop.wait(LATENCY_POLL_SECONDS)

    def event(i: int, customer: str) -> tuple[str, bytes, bytes]:
        event_id = f"lat-{i}"
        body = {
            "specversion": "1.0", "id": event_id, "source": source, "type": "api.request", "subject": customer,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": {"method": "GET", "path": "/v1/items"},
        }  # fmt: skip
        return event_id, customer.encode(), orjson.dumps(body)

    async def send(first: int, count: int) -> None:
        """Events first .. first+count-1 as one record (one customer's), stamped as handed over."""
        customer = f"cust-{first // batch % 300:04d}"
        events = [event(i, customer) for i in range(first, first + count)]
        value = events[0][2] if batch == 1 else b"[" + b",".join(e[2] for e in events) + b"]"
        with lock:
            now = time.time()
            for event_id, _, _ in events:
                produced[event_id] = pending[event_id] = now
        await producer.send(topic, value, key=customer.encode())

    async def wait_visible(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.check_alive()
            with lock:
                if not pending:
                    return
            await asyncio.sleep(0.05)

    async def send_one_warm(p: int) -> None:
        event_id, key, value = event(-1 - p, f"cust-{p:04d}")
        with lock:
            produced[event_id] = pending[event_id] = time.time()
        await producer.send(topic, value, key=key)

    poller = threading.Thread(target=poll, name="bench-latency-poll", daemon=True)
    poller.start()
    try:
        async with UsageProducer(bootstrap, linger_ms=5) as producer:
            # Warm-up: the worker has joined its group and landed a flush before we measure.
            warm = [f"lat-{-1 - p}" for p in range(8)]
            for p in range(8):
                await send_one_warm(p)
            await producer.flush()
            await wait_visible(90.0)
            with lock:
                if not all(w in visible for w in warm):
                    raise BenchError(f"latency warm-up events never became visible; see {worker.log_path}")
                produced.clear()
                visible.clear()
                pending.clear()
            # Steady rate: every 10 ms, send what the schedule says is due by now.
            started = time.monotonic()
            sent = 0
            total = int(rate * seconds)
            while sent < total:
                due = min(total, int((time.monotonic() - started) * rate) + 1)
                while sent < due:
                    count = min(batch, total - sent)
                    await send(sent, count)
                    sent += count
                await asyncio.sleep(0.01)
            produce_seconds = time.monotonic() - started
            await producer.flush()
        await wait_visible(60.0)
    finally:
        stop.set()
        poller.join(5)
    with lock:
        delays = sorted(visible[i] - produced[i] for i in produced if i in visible)
        missing = sum(1 for i in produced if i not in visible)
    return {
        "target_rate_per_s": round(rate),
        "events_per_record": batch,
        "achieved_rate_per_s": round(len(produced) / max(produce_seconds, 1e-6)),
        "seconds": round(produce_seconds, 2),
        "events": len(produced),
        "seen": len(delays),
        "missing": missing,
        "p50_s": round(_percentile(delays, 0.50), 3),
        "p99_s": round(_percentile(delays, 0.99), 3),
        "max_s": round(delays[-1], 3) if delays else None,
        "poll_errors": len(poll_errors),
        "poll_round_trip_ms_p50": round(1000 * _percentile(sorted(round_trips), 0.50), 1),
        "poll_round_trip_ms_p99": round(1000 * _percentile(sorted(round_trips), 0.99), 1),
    }


def _peak_rss(
    bench: _Bench, distinct_ids: int, timeout: float, over_http: bool = False
) -> tuple[dict[str, float], Exactness]:
    """The worker's peak RSS after ``distinct_ids`` ids and a tenth of them again. Over HTTP,
    the worker writes to a separate ClickHouse process (``serve-clickhouse``, chdb behind
    ClickHouse's HTTP interface) and holds no ClickHouse itself, as in production."""
    phase = "rss-http" if over_http else "rss"
    prefix, group = bench.names(phase)
    topic = bench.create_topics(prefix)
    records, events = _distinct_id_records(distinct_ids)
    _say(f"{phase}: publishing {distinct_ids:,} distinct ids in {len(records):,} records")
    ends = bench.publish(topic, records)
    server = bench.start_clickhouse_server(phase) if over_http else None
    worker = bench.start_worker(phase, prefix, group, clickhouse_dsn=server[0] if server else None, embedded=True)
    try:
        stats: dict[str, float] = {"distinct_ids": distinct_ids}
        if not over_http and bench.flush_process:
            stats["flush_process"] = 0  # it needs ClickHouse outside the worker: off in this phase
        caught_up = bench.wait_caught_up(worker, ends, timeout)
        start = worker.consumption_started()
        if start is not None:
            stats["ingest_events_per_s"] = round(distinct_ids / max(caught_up - start, 1e-6))
        # Then repeats of the first tenth: lookups against a store holding every id.
        repeats = records[: max(1, len(records) // 10)]
        ends = bench.publish(topic, repeats)
        bench.wait_caught_up(worker, ends, timeout)
        status = worker.status_kb()
        repeats_sent = sum(r.events for r in repeats)
        stats["repeats_sent"] = repeats_sent
        stats["vmhwm_mb"] = round(status["VmHWM"] / 1024, 1)
        # With EXAMINE_PROCESSES the worker has children; the target counts them too (their
        # peaks summed: an upper bound, as they need not peak at the same moment).
        children = worker.children_status_kb()
        stats["children"] = len(children)
        stats["children_vmhwm_mb"] = round(sum(c.get("VmHWM", 0) for c in children) / 1024, 1)
        stats["total_vmhwm_mb"] = round(stats["vmhwm_mb"] + stats["children_vmhwm_mb"], 1)
        stats["vmrss_mb"] = round(status["VmRSS"] / 1024, 1)
        # RssFile is mostly chdb's shared library (clean, shared pages), RssAnon the heap.
        stats["rss_anon_mb"] = round(status.get("RssAnon", 0) / 1024, 1)
        stats["rss_file_mb"] = round(status.get("RssFile", 0) / 1024, 1)
        # The dedupe store lives in RocksDB files, off the Python heap: its size per id.
        dedupe_bytes = sum(f.stat().st_size for f in (worker.data_dir / "dedupe").rglob("*") if f.is_file())
        stats["dedupe_disk_bytes_per_id"] = round(dedupe_bytes / distinct_ids, 1)
        client = worker.reader()
        flushes = diagnostics.flushes(client)
        stats["flushes"] = flushes.number
        stats["max_flush_records"] = flushes.max_records
        stats["max_flush_events"] = flushes.max_events
        workload = Workload(records, events, repeats_sent, 0, 0)
        exactness = _exactness(client, workload)
        return stats, exactness
    finally:
        bench.stop_worker(worker)
        if server is not None:
            bench.processes.stop(server[1])
