"""In-memory stand-ins for the usage sink's ports: ClickHouse (FakeStore) and the broker's log (FakeLog).

FakeStore keeps what ClickHouse would keep: ``ingest_progress`` rows as inserted, and
``usage_events`` / ``usage_rollup_1m`` inserts deduplicated by ``insert_deduplication_token``
(a repeated token is dropped whole, and remembered in ``dropped``). Its views read the tables
the way their engines do (schemas/clickhouse/000[1-3]_*.sql): ``events_final`` and
``markers_final`` as ReplacingMergeTree ``FINAL``, ``rollup_totals`` as the AggregatingMergeTree
merges. ``sightings_after`` answers like :class:`bastionary.storage.usage.ClickHouseUsageStore`.
The ``Crashing`` variants die (raise :class:`Crash`) at an armed call, before or after its write,
and :class:`Cluster` / :func:`run` deliver a partition to worker after worker as Kafka would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.logs import LogProbe
from bastionary.metering.ports import EventRow, FlushMarker, RollupRow, SightingRow
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import Admission, DeadLetter, InboundRecord
from bastionary.metering.sink import SinkConfig, UsageSink

# (value_sum, event_count, value_max, unique_values, latest): one merged usage_rollup_1m cell
Merged = tuple[Decimal, int, Decimal | None, frozenset[str], tuple[datetime, Decimal]]


class FakeStore:
    """ClickHouse as the sink sees it: markers, and inserts deduplicated by token."""

    def __init__(self) -> None:
        self.markers: list[tuple] = []
        self.events: dict[str, list[EventRow]] = {}
        self.rollups: dict[str, list[RollupRow]] = {}
        self.dropped: list[str] = []  # tokens of inserts ClickHouse dropped as repeats
        self.sightings_read: list[SightingRow] = []  # what recovery re-read from usage_events

    def insert_markers(self, rows: list[tuple]) -> None:
        self.markers.extend(rows)

    def insert_events(self, rows: list[EventRow], token: str) -> None:
        self._insert(self.events, rows, token)

    def insert_rollups(self, rows: list[RollupRow], token: str) -> None:
        self._insert(self.rollups, rows, token)

    def _insert(self, table: dict, rows: list, token: str) -> None:
        if not rows:
            return  # the ClickHouse store sends no empty insert
        if token in table:
            self.dropped.append(token)
        else:
            table[token] = list(rows)

    def latest_marker(self, topic: str, partition: int) -> FlushMarker | None:
        mine = [m for m in self.markers if m[0] == topic and m[2] == partition]
        if not mine:
            return None
        m = max(mine, key=lambda m: (m[1], m[4]))
        return FlushMarker(m[1], m[3], m[4], m[11], m[9])

    def sightings_after(self, topic, partition, after, horizon) -> list[SightingRow]:
        position = after if after is not None else (0, -1)
        mine = [r for r in self.event_rows() if (r.ingest_topic, r.ingest_partition) == (topic, partition)]
        if not mine:
            return []
        # The partition's broker time, not the wall clock, in whole seconds as the store reads it.
        since = max(r.ingested_at for r in mine).replace(microsecond=0) - horizon
        rows = [
            SightingRow(
                r.source,
                r.event_id,
                r.ingest_epoch,
                r.ingest_offset,
                r.ingest_index,
                int(r.ingested_at.timestamp()),
                r.payload_hash,
            )
            for r in mine
            if (r.ingest_epoch, r.ingest_offset) > position and r.ingested_at >= since
        ]
        self.sightings_read.extend(rows)
        return rows

    # -- reads as analysts make them ---------------------------------------------------

    def event_rows(self) -> list[EventRow]:
        return [row for rows in self.events.values() for row in rows]

    def events_final(self) -> dict[tuple, EventRow]:
        """``usage_events FINAL``: one row per sort key (customer_id, type, time, source, event_id)."""
        return {(r.customer_id, r.type, r.time, r.source, r.event_id): r for r in self.event_rows()}

    def markers_final(self) -> list[tuple]:
        """``ingest_progress FINAL``: the last row per (topic, partition, log_epoch, first_offset)."""
        return list({(m[0], m[2], m[1], m[3]): m for m in self.markers}.values())

    def rollup_totals(self, *, by_ingest_minute: bool = False) -> dict[tuple, Merged]:
        """Every column merged per (meter, customer_id, group_key, window_start[, ingested_minute])."""
        out: dict[tuple, Merged] = {}
        for rows in self.rollups.values():
            for r in rows:
                key = (r.meter, r.customer_id, r.group_key, r.window_start)
                key += (r.ingested_minute,) if by_ingest_minute else ()
                s, n, mx, uniq, latest = out.get(key, (Decimal(0), 0, None, frozenset(), r.latest))
                if r.value_max is not None:
                    mx = r.value_max if mx is None else max(mx, r.value_max)
                out[key] = (s + r.value_sum, n + r.event_count, mx, uniq | set(r.unique_values), max(latest, r.latest))
        return out

    def total(self) -> int:
        return sum(int(row[6]) for rows in self.rollups.values() for row in rows)


@dataclass
class FakeLog:
    """The broker's partitions: offset -> fingerprint; rewinds are recorded."""

    records: dict[tuple[str, int], dict[int, int]] = field(default_factory=dict)
    rewinds: list[tuple[str, int, int]] = field(default_factory=list)
    starts: dict[tuple[str, int], int] = field(default_factory=dict)  # the log start, once retention ran

    def retain_from(self, topic: str, partition: int, start: int) -> None:
        """Retention: the records before ``start`` are deleted."""
        log = self.records.setdefault((topic, partition), {})
        for offset in [o for o in log if o < start]:
            del log[offset]
        self.starts[(topic, partition)] = start

    def hold(self, records: list[InboundRecord]) -> None:
        for r in records:
            self.records.setdefault((r.topic, r.partition), {})[r.offset] = r.fingerprint

    def replace(self, topic: str, partition: int, records: list[InboundRecord]) -> None:
        self.records[(topic, partition)] = {}
        self.hold(records)

    async def probe(self, anchors):
        out = {}
        for tp, offset in anchors.items():
            log = self.records.get(tp, {})
            start = self.starts.get(tp, 0)
            following = min((o for o in log if o >= offset), default=None) if offset >= start else None
            out[tp] = LogProbe(offset, log.get(offset), start, max(log, default=-1) + 1, following)
        return out

    async def rewind(self, topic, partition, offset):
        self.rewinds.append((topic, partition, offset))


# -- deaths: a worker process killed at one port call -----------------------------------


class Crash(Exception):
    """The worker process dies here."""


class Faults:
    """At most one armed death: at ``call``, before its write takes effect or just after (``lands``)."""

    def __init__(self) -> None:
        self.armed: tuple[str, bool] | None = None

    def at(self, call: str, lands: bool) -> None:
        if self.armed is not None and tuple(self.armed) == (call, lands):
            self.armed = None
            raise Crash(call)


class CrashingStore(FakeStore):
    """The store a dying worker writes to: ``insert_markers``, ``insert_events``, ``insert_rollups``."""

    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    def insert_markers(self, rows: list[tuple]) -> None:
        self.faults.at("insert_markers", False)
        super().insert_markers(rows)
        self.faults.at("insert_markers", True)

    def _insert(self, table: dict, rows: list, token: str) -> None:
        call = "insert_events" if table is self.events else "insert_rollups"
        self.faults.at(call, False)
        super()._insert(table, rows, token)
        self.faults.at(call, True)


class CrashingDedupe:
    """A dedupe cache (the RocksDB one) whose ``record``, one atomic batch, a worker can die around."""

    def __init__(self, cache: Any, faults: Faults) -> None:
        self.cache, self.faults = cache, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)

    def record(self, *args: Any, **kwargs: Any) -> None:
        self.faults.at("dedupe.record", False)
        self.cache.record(*args, **kwargs)
        self.faults.at("dedupe.record", True)


# -- Kafka around the workers: delivery from the committed offset, one worker after another --


@dataclass
class Cluster:
    """What outlives a worker process: one partition of ``usage.events`` and the group's committed
    offset (Kafka), the DLQ, ClickHouse, and the RocksDB directory of the dedupe cache (``disk``)."""

    records: list[InboundRecord]
    root: Path
    meters: MeterIndex
    limits: RecordLimits
    horizon: timedelta
    faults: Faults = field(default_factory=Faults)
    dlq: list[DeadLetter] = field(default_factory=list)
    committed: int = 0
    workers: int = 0
    disk: int = 0  # which dedupe directory the next worker opens
    chunks: int = 0  # deliveries so far, over all workers: where deaths are armed
    flushes: int = 0

    def __post_init__(self) -> None:
        self.store = CrashingStore(self.faults)
        self.log = FakeLog()
        self.log.hold(self.records)

    async def send(self, letters: list[DeadLetter]) -> None:
        self.faults.at("send_dead_letters", False)
        self.dlq.extend(letters)
        self.faults.at("send_dead_letters", True)

    def start(self) -> tuple[UsageSink, RocksDedupeStore]:
        """A new worker process (worker_id ``w<n>``) on this cluster; close the cache when it ends."""
        self.workers += 1
        rocks = RocksDedupeStore(self.root / f"dedupe-{self.disk}", int(self.horizon.total_seconds()))
        config = SinkConfig(f"w{self.workers}", 1)
        engine = LocalFlushEngine(
            self.store, CrashingDedupe(rocks, self.faults), self.meters, self.limits, self.horizon
        )
        return UsageSink(engine, self.send, config, self.log), rocks


async def work(cl: Cluster, bounds: Sequence[int], deaths: dict[int, Any], commits: Callable[[int], bool]) -> bool:
    """One worker, from the committed offset to the end of the log: it reads up to the next of
    ``bounds``, flushes, acks what landed and lets Kafka commit it (if ``commits(n)`` for the
    n-th flush); ``kafka_commit`` can be died at too. False if the worker died on the way."""
    sink, rocks = cl.start()
    position, acked = cl.committed, set()
    try:
        while position < len(cl.records):
            end = min(b for b in bounds if b >= position)
            cl.faults.armed, cl.chunks = deaths.pop(cl.chunks, None), cl.chunks + 1
            for record in cl.records[position : end + 1]:
                if await sink.admit(record) is Admission.LANDED:
                    acked.add(record.offset)
            position = end + 1
            while landed := await sink.flush():
                acked.update(r.offset for r in landed)
                cl.faults.at("kafka_commit", False)
                if commits(cl.flushes):
                    while cl.committed in acked:
                        cl.committed += 1
                cl.flushes += 1
                cl.faults.at("kafka_commit", True)
            cl.faults.armed = None
        return True
    except Crash:
        return False
    finally:
        rocks.close()


async def run(
    cl: Cluster,
    bounds: Sequence[int],
    crashes: dict[int, Any] | None = None,
    *,
    commits: Sequence[bool] = (True,),
    lose_disk: bool = False,
    bounds_after_crash: Sequence[int] | None = None,
) -> int:
    """Workers one after another until the log has landed; returns how many died.

    ``crashes``: delivery number (over all workers) -> the (call, lands) to die at; ``commits``
    cycles over the flushes; ``lose_disk``: a worker after a death starts with an empty cache.
    """
    crashes, deaths = dict(crashes or {}), 0
    while not await work(cl, bounds, crashes, lambda n: commits[n % len(commits)]):
        deaths += 1
        cl.disk += lose_disk
        bounds = bounds_after_crash or bounds
    return deaths
