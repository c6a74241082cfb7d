"""``bastionary bench --stages``: where a batch event's time goes, one flush stage at a time.

The throughput phases time the whole worker. This times the stages of its flush alone, over
the same records (the throughput phase's workload in 100-event records), in this process,
with no broker and no Faust: each flush is planned and landed as the sink lands it, one
stage after the other, so each stage's time is its own:

- ``examine``: parse, validate, read the meters and build each event's row
  (:mod:`bastionary.metering.examine`);
- ``settle``: dedupe verdicts and the flush's rollup rows (:class:`FlushPlanner`, given the
  examined records);
- ``markers``, ``events_insert``, ``rollups_insert``: the flush's ClickHouse inserts,
  clickhouse-connect's serialization included;
- ``dedupe_record``: the flush's sightings written to the dedupe store;
- ``release``: the flush's objects freed as its plan goes, and the garbage collection the
  worker runs between flushes (:mod:`bastionary.worker.collecting`: the command's collector
  takes over as the worker's does; a caller that passes none times the freeing alone).

Figures are microseconds per event offered (repeats included, as the throughput phase counts
them). The flush runs in one interpreter, so their sum bounds what a worker lands per second
however its threads are arranged; the batch target (100,000 events/s) leaves 10 us per
event for all of it. Dead letters are counted, not sent: there is no broker here.

Each stage is timed twice: by the clock, and by this process's CPU time (all its threads).
They part where the work is elsewhere: with ClickHouse over HTTP (``--clickhouse-url``, the
production shape), an insert's clock time includes the server's parse and the CPU time is
the worker's own; with chdb in this process, the engine's threads count as this process's.
"""

from __future__ import annotations

import gc
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bastionary.catalog import load_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.examine import Examined
from bastionary.metering.planning import FlushPlanner, examine_here
from bastionary.metering.ports import DedupeCache
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord
from bastionary.storage.client import Client, Compression, open_client
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.tools.bench.options import BATCH_EVENTS, TARGET_BATCH_EVENTS_PER_S, BenchError
from bastionary.tools.bench.workloads import _batched, _exactness
from bastionary.tools.workload import Record, generate

STAGES = ("examine", "settle", "markers", "events_insert", "rollups_insert", "dedupe_record", "release")
TOPIC = "bench-stages.usage.events"
EPOCH = 1
WORKER_ID = "bench-stages"


def run_stages_alone(
    clickhouse_url: str | None,
    events: int,
    flush_bytes: int,
    limits: RecordLimits,
    horizon_seconds: int,
    between_flushes: Callable[[], object] = lambda: None,
    compression: Compression = "none",
) -> dict[str, Any]:
    """:func:`run_stages` with chdb in this process, or against the ClickHouse server at
    ``clickhouse_url`` (a user allowed to create a database) in a database of its own; the
    temp dir, and the server's database, are removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="bastionary-stages-"))
    try:
        client, where, database = _stage_client(clickhouse_url, root, compression)
        try:
            dedupe = RocksDedupeStore(root / "dedupe", horizon_seconds)
            try:
                result = run_stages(client, dedupe, events, flush_bytes, limits, between_flushes)
            finally:
                dedupe.close()
            return result | {"clickhouse": where}
        finally:
            if clickhouse_url:
                client.command(f"DROP DATABASE IF EXISTS `{database}`")
            client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stage_client(clickhouse_url: str | None, root: Path, compression: Compression) -> tuple[Client, str, str]:
    """The client, where it writes (for the report), and its database."""
    if not clickhouse_url:
        return open_client(f"chdb://{root / 'clickhouse'}", "bastionary", create=True), "chdb in this process", ""
    database = f"bastionary_stages_{secrets.token_hex(4)}"
    try:
        client = open_client(clickhouse_url, database, create=True, compression=compression)
    except Exception as error:  # unreachable, refused, no right to create a database: the caller's to fix
        raise BenchError(f"ClickHouse at --clickhouse-url could not be opened: {error}") from error
    return client, f"a server over {urlsplit(clickhouse_url).scheme}, compression {compression}", database


def run_stages(
    client: Client,
    dedupe: DedupeCache,
    events: int,
    flush_bytes: int,
    limits: RecordLimits,
    between_flushes: Callable[[], object] = lambda: None,
) -> dict[str, Any]:
    """Land the workload flush by flush into ``client``'s database (migrated here), timed per
    stage; ``between_flushes`` runs after each, as the worker collects garbage there."""
    store = ClickHouseUsageStore(client)
    store.migrate()
    workload = generate(events, single_only=True)
    records = _batched(workload.records, BATCH_EVENTS)
    meters = MeterIndex(load_catalog(None).meters)
    flush_stages = _FlushStages(store, dedupe, meters, limits)
    # The workload is the bench's own, which no worker holds: collected now, it leaves the young
    # generation, and no timed collection walks it.
    gc.collect()
    spent = dict.fromkeys(STAGES, 0.0)
    spent_cpu = dict.fromkeys(STAGES, 0.0)
    offered = flushes = rollup_rows = dead_letters = next_offset = 0
    for flush in _flushes(records, flush_bytes):
        inbound = _inbound(flush, next_offset)
        next_offset += len(inbound)
        offered += sum(r.events for r in flush)
        marks, counts = flush_stages.land(inbound)  # returns once the plan is released
        between_flushes()
        marks.append((time.perf_counter(), time.process_time()))
        for stage, begin, end in zip(STAGES, marks, marks[1:], strict=False):
            spent[stage] += end[0] - begin[0]
            spent_cpu[stage] += end[1] - begin[1]
        flushes += 1
        rollup_rows += counts[0]
        dead_letters += counts[1]
    per_event = {stage: round(1e6 * seconds / max(offered, 1), 2) for stage, seconds in spent.items()}
    cpu_per_event = {stage: round(1e6 * seconds / max(offered, 1), 2) for stage, seconds in spent_cpu.items()}
    total = sum(spent.values())
    return {
        "events": offered,
        "records": len(records),
        "flushes": flushes,
        "events_per_flush": round(offered / max(flushes, 1)),
        "rollup_rows": rollup_rows,
        "dead_letters": dead_letters,
        "us_per_event": per_event,
        "total_us_per_event": round(1e6 * total / max(offered, 1), 2),
        "cpu_us_per_event": cpu_per_event,
        "total_cpu_us_per_event": round(1e6 * sum(spent_cpu.values()) / max(offered, 1), 2),
        "ceiling_events_per_s": round(offered / max(total, 1e-9)),
        "budget_us_per_event": round(1e6 / TARGET_BATCH_EVENTS_PER_S, 2),
        "exactness": _exactness(client, workload),
    }


class _FlushStages:
    """One flush planned and landed as the sink does it, with the time each stage ends."""

    def __init__(self, store: ClickHouseUsageStore, dedupe: DedupeCache, meters: MeterIndex, limits: RecordLimits):
        self.store = store
        self.dedupe = dedupe
        self.examine_all = examine_here(meters, limits)
        self.examined: list[Examined] = []  # this flush's, examined apart so the two stages are timed apart
        self.planner = FlushPlanner(meters, dedupe, limits, self._already_examined)

    def _already_examined(self, _records: list[InboundRecord], _epoch: int) -> Iterable[Examined]:
        return self.examined

    def land(self, inbound: list[InboundRecord]) -> tuple[list[tuple[float, float]], tuple[int, int]]:
        """The stage marks so far (clock, CPU), and (rollup rows, dead letters); the flush's
        objects are released when this returns, as the worker's are when its flush returns."""
        marks = [_mark()]
        self.examined[:] = self.examine_all(inbound, EPOCH)
        marks.append(_mark())
        plan = self.planner.plan(TOPIC, 0, EPOCH, inbound)
        self.examined.clear()
        marks.append(_mark())
        self.store.insert_markers([plan.marker(WORKER_ID, datetime.now(UTC))])
        marks.append(_mark())
        self.store.insert_events(plan.event_rows, plan.token + "/events")
        marks.append(_mark())
        self.store.insert_rollups(plan.rollup_rows, plan.token + "/rollups")
        marks.append(_mark())
        self.dedupe.record(TOPIC, 0, plan.sightings, plan.last_offset, epoch=EPOCH)
        marks.append(_mark())
        return marks, (len(plan.rollup_rows), plan.stats.dead_lettered)


def _mark() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _flushes(records: list[Record], flush_bytes: int) -> Iterator[list[Record]]:
    """Consecutive records of about ``flush_bytes`` (the sink flushes at ``FLUSH_MAX_BYTES``)."""
    flush: list[Record] = []
    held = 0
    for record in records:
        flush.append(record)
        held += len(record.value)
        if held >= flush_bytes:
            yield flush
            flush, held = [], 0
    if flush:
        yield flush


def _inbound(flush: list[Record], first_offset: int) -> list[InboundRecord]:
    now_ms = int(time.time() * 1000)  # the broker time: the workload's events are at most days old
    return [
        InboundRecord(TOPIC, 0, first_offset + n, now_ms, r.key, r.value, list(r.headers)) for n, r in enumerate(flush)
    ]


def render_stages(result: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2)
    lines = [
        (
            f"{result['events']:,} events in {result['records']:,} records, {result['flushes']} flushes"
            f" of about {result['events_per_flush']:,} events, {result['rollup_rows']:,} rollup rows"
            f" ({result['clickhouse']})"
        ),
        "",
        f"{'stage':<16}{'us per event':>14}{'CPU us':>10}",
    ]
    cpu = result["cpu_us_per_event"]
    lines += [f"{stage:<16}{value:>14.2f}{cpu[stage]:>10.2f}" for stage, value in result["us_per_event"].items()]
    lines += [
        f"{'total':<16}{result['total_us_per_event']:>14.2f}{result['total_cpu_us_per_event']:>10.2f}",
        "",
        (
            f"one interpreter lands at most {result['ceiling_events_per_s']:,} events/s this way;"
            f" the batch target leaves {result['budget_us_per_event']} us per event"
        ),
        f"exact: {result['exactness']['exact']}",
    ]
    return "\n".join(lines)
