"""The usage sink: buffered records of each partition, flushed to ClickHouse exactly once.

Kafka delivers at least once and the embedded broker has no transactions, so exactness
comes from three facts, kept together here:

1. Every flush covers a contiguous offset range [a, b] of one partition, and its marker
   row (``ingest_progress``) is written before any of its data.
2. Its data inserts carry deduplication tokens derived from (topic, partition, a, b), and
   everything in them is a pure function of the records in [a, b] (validation, dedupe and
   windows use the broker timestamp, never the wall clock).
3. Offsets are acked to Kafka only after the flush has fully landed.

So when a worker starts or takes a partition over, the newest marker names the one flush
that may be incomplete; it is replayed over exactly the same range, ClickHouse drops the
inserts that had landed, and the rest land once. Records before ``a`` are done and skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
import structlog

from bastionary.dedupe import Sighting, Verdict, judge
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import member_bytes, parse_record
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.readings import MeterIndex
from bastionary.metering.rollup import RollupBuilder
from bastionary.storage.clickhouse import FlushMarker, UsageStore

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class InboundRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    handle: object = None  # the Faust event to ack once the flush has landed


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    code: ErrorClass


DEAD_LETTER_VALUE_LIMIT = 64 * 1024

DeadLetterSender = Callable[[list[DeadLetter]], Awaitable[None]]


@dataclass
class FlushStats:
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


@dataclass
class _Plan:
    """Everything one flush of one partition will write, computed before anything is written."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: list[InboundRecord]
    event_rows: list[tuple] = field(default_factory=list)
    rollup_rows: list[tuple] = field(default_factory=list)
    sightings: list[tuple[bytes, Sighting]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stats: FlushStats = field(default_factory=FlushStats)

    log_epoch: int = 0
    replayed: bool = False  # the range of a flush that may have landed before (see _recover)

    @property
    def token(self) -> str:
        return f"{self.topic}/{self.partition}@{self.log_epoch}/{self.first_offset}-{self.last_offset}"


@dataclass
class _PartitionState:
    done_through: int  # every offset up to here has fully landed
    replay: FlushMarker | None  # the newest flush, possibly incomplete: redo it as one unit
    buffer: list[InboundRecord] = field(default_factory=list)


@dataclass(frozen=True)
class SinkConfig:
    worker_id: str
    log_epoch: int
    max_record_bytes: int
    max_future_skew: timedelta
    dedupe_horizon: timedelta


class UsageSink:
    def __init__(
        self,
        store: UsageStore,
        dedupe: RocksDedupeStore,
        meters: MeterIndex,
        send_dead_letters: DeadLetterSender,
        config: SinkConfig,
        on_flushed: Callable[[str, int, FlushStats], None] | None = None,
    ):
        self.store = store
        self.dedupe = dedupe
        self.meters = meters
        self.send_dead_letters = send_dead_letters
        self.config = config
        self.on_flushed = on_flushed
        # Called with each flush's plans once they have landed, under the flush lock: what
        # keeps state derived from the rollups (entitlements) can hold ``lock`` to read
        # ClickHouse without a flush landing halfway through its read.
        self.listeners: list[Callable[[list[_Plan]], None]] = []
        self.lock = asyncio.Lock()
        self._partitions: dict[tuple[str, int], _PartitionState] = {}
        self._buffered_bytes = 0

    # -- intake --------------------------------------------------------------------------

    async def admit(self, record: InboundRecord) -> bool:
        """Buffer ``record``; False means it had already landed and can be acked at once."""
        tp = (record.topic, record.partition)
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = await asyncio.to_thread(self._recover, record.topic, record.partition)
        if record.offset <= state.done_through:
            return False
        state.buffer.append(record)
        self._buffered_bytes += len(record.value or b"")
        return True

    def buffered(self) -> int:
        return sum(len(s.buffer) for s in self._partitions.values())

    def buffered_bytes(self) -> int:
        """Record bytes waiting: batch records carry many events, so bytes bound a flush's size."""
        return self._buffered_bytes

    def last_landed(self) -> dict[tuple[str, int], int]:
        return {tp: s.done_through for tp, s in self._partitions.items()}

    async def release(self, topic_partitions) -> None:
        """Forget revoked partitions after any flush in progress has landed (no zombie writes)."""
        async with self.lock:
            for tp in topic_partitions:
                self._partitions.pop(tp, None)

    # -- recovery ------------------------------------------------------------------------

    def _recover(self, topic: str, partition: int) -> _PartitionState:
        epoch = self.config.log_epoch
        marker = self.store.latest_marker(topic, partition)
        landed = (marker.log_epoch, marker.last_offset) if marker else None
        cached = self.dedupe.high_water(topic, partition)
        if cached is not None and (landed is None or cached > landed):
            # The cache knows offsets ClickHouse does not (a new or reset database): drop it.
            self.dedupe.forget_partition(topic, partition)
            cached = None
        if landed is not None and (cached is None or cached < landed):
            self._backfill_dedupe(topic, partition, cached, landed)
        if marker is not None and marker.log_epoch > epoch:
            raise RuntimeError(
                f"{topic}/{partition} was written under log epoch {marker.log_epoch}, newer than ours ({epoch})"
            )
        if marker is None or marker.log_epoch < epoch:
            log.info("partition starts fresh", topic=topic, partition=partition, log_epoch=epoch)
            return _PartitionState(done_through=-1, replay=None)
        log.info(
            "partition recovered",
            topic=topic,
            partition=partition,
            replay_first=marker.first_offset,
            replay_last=marker.last_offset,
        )
        return _PartitionState(done_through=marker.first_offset - 1, replay=marker)

    def _backfill_dedupe(
        self, topic: str, partition: int, after: tuple[int, int] | None, through: tuple[int, int]
    ) -> None:
        since = datetime.now(timezone.utc) - self.config.dedupe_horizon
        rows = self.store.sightings_after(topic, partition, after, since)
        entries = [
            (
                self.dedupe.key(topic, partition, source, event_id),
                Sighting(int(o), int(i), int(ts), bytes.fromhex(h), int(e)),
            )
            for source, event_id, e, o, i, ts, h in rows
        ]
        self.dedupe.record(topic, partition, entries, through[1], epoch=through[0])
        log.info("dedupe cache backfilled", topic=topic, partition=partition, keys=len(entries), after=after)

    # -- flushing ------------------------------------------------------------------------

    async def flush(self) -> list[InboundRecord]:
        """Land every flushable buffer; returns the records that may now be acked."""
        async with self.lock:
            batches = []
            self._buffered_bytes = 0
            for (topic, partition), state in self._partitions.items():
                replaying = state.replay is not None
                records = self._take_flushable(state)
                if records:
                    batches.append((topic, partition, state, records, replaying and state.replay is not None))
                self._buffered_bytes += sum(len(r.value or b"") for r in state.buffer)  # held back
            if not batches:
                return []
            plans = await asyncio.to_thread(lambda: [self._plan(t, p, r, rep) for t, p, _, r, rep in batches])
            await self._land(plans)
            landed = []
            for listener in self.listeners:
                listener(plans)
            for (_, _, state, records, _), plan in zip(batches, plans):
                state.done_through = plan.last_offset
                state.replay = None
                landed.extend(records)
                if self.on_flushed:
                    self.on_flushed(plan.topic, plan.partition, plan.stats)
            return landed

    @staticmethod
    def _take_flushable(state: _PartitionState) -> list[InboundRecord]:
        if not state.buffer:
            return []
        if state.replay is None:
            records, state.buffer = state.buffer, []
            return records
        # A replay lands only as the very range it had before, or its tokens would not match.
        end = state.replay.last_offset
        if state.buffer[0].offset > end:
            # Kafka resumed past the range: it had been acked, so it had fully landed.
            state.replay = None
            records, state.buffer = state.buffer, []
            return records
        if state.buffer[-1].offset < end:
            return []
        records = [r for r in state.buffer if r.offset <= end]
        state.buffer = [r for r in state.buffer if r.offset > end]
        return records

    async def _land(self, plans: list[_Plan]) -> None:
        # The order below is the guarantee. A crash after step...
        #  1 (markers): the next owner replays [a, b] exactly; nothing else was written.
        #  2 (dead letters): they are sent again on replay; the DLQ is at-least-once, and its
        #    source.partition/source.offset headers identify repeats.
        #  3/4 (events, rollups): the replay's identical tokens make ClickHouse drop them.
        #  5 (dedupe cache): the next owner re-reads the missing keys from usage_events.
        #  6 (ack, by the caller): Kafka may redeliver; records <= b are skipped by offset.
        now = datetime.now(timezone.utc)
        markers = [
            (
                p.topic,
                p.log_epoch,
                p.partition,
                p.first_offset,
                p.last_offset,
                p.stats.records,
                p.stats.accepted,
                p.stats.duplicates,
                p.stats.dead_lettered,
                self.config.worker_id,
                now,
            )
            for p in plans
        ]
        await asyncio.to_thread(self.store.insert_markers, markers)
        dead_letters = [d for p in plans for d in p.dead_letters]
        if dead_letters:
            await self.send_dead_letters(dead_letters)
        await asyncio.to_thread(self._write_data, plans)

    def _write_data(self, plans: list[_Plan]) -> None:
        for plan in plans:
            self.store.insert_events(plan.event_rows, plan.token + "/events")
            self.store.insert_rollups(plan.rollup_rows, plan.token + "/rollups")
            self.dedupe.record(plan.topic, plan.partition, plan.sightings, plan.last_offset, epoch=plan.log_epoch)
            log.debug(
                "flush landed",
                topic=plan.topic,
                partition=plan.partition,
                first_offset=plan.first_offset,
                last_offset=plan.last_offset,
                accepted=plan.stats.accepted,
            )

    def _plan(self, topic: str, partition: int, records: list[InboundRecord], replayed: bool = False) -> _Plan:
        cfg = self.config
        plan = _Plan(topic, partition, records[0].offset, records[-1].offset, records, log_epoch=cfg.log_epoch,
                     replayed=replayed)
        rollups = RollupBuilder()
        in_flush: dict[bytes, Sighting] = {}
        for record in records:
            plan.stats.records += 1
            parsed = parse_record(
                record.value, record.headers, record.timestamp_ms, cfg.max_record_bytes, cfg.max_future_skew
            )
            if parsed.rejection is not None:
                self._dead_letter(plan, record, record.value or b"", parsed.rejection, None)
                continue
            seen_at = record.timestamp_ms // 1000
            ingested_at = datetime.fromtimestamp(record.timestamp_ms / 1000, tz=timezone.utc)
            for member in parsed.members:
                event = member.event
                if event is None:
                    self._reject_member(plan, record, parsed, member, member.rejection)
                    continue
                try:
                    readings = self.meters.readings(event)
                except Rejection as rejection:
                    self._reject_member(plan, record, parsed, member, rejection)
                    continue
                key = self.dedupe.key(topic, partition, event.source, event.id)
                current = Sighting(record.offset, member.index, seen_at, member.payload_hash, cfg.log_epoch)
                previous = in_flush.get(key) or self.dedupe.get(key, seen_at)
                verdict = judge(previous, current)
                if verdict is Verdict.DUPLICATE:
                    plan.stats.duplicates += 1
                    continue
                if verdict is Verdict.CONFLICT:
                    conflict = Rejection(
                        ErrorClass.DUPLICATE_CONFLICT,
                        f"(source, id) = ({event.source}, {event.id}) was first seen at offset"
                        f" {previous.offset} (epoch {previous.log_epoch}) with another payload; the first one counts",
                    )
                    self._reject_member(plan, record, parsed, member, conflict)
                    continue
                in_flush[key] = previous or current
                plan.sightings.append((key, current))
                plan.stats.accepted += 1
                plan.event_rows.append(
                    (
                        event.id,
                        event.source,
                        event.type,
                        event.subject,
                        event.time,
                        _data_json(member.raw),
                        member.payload_hash.hex(),
                        ingested_at,
                        topic,
                        cfg.log_epoch,
                        partition,
                        record.offset,
                        member.index,
                    )
                )
                for reading in readings:
                    rollups.add(event.subject, event.time, reading, ingested_at)
        plan.rollup_rows = rollups.rows()
        return plan

    def _reject_member(self, plan: _Plan, record: InboundRecord, parsed, member, rejection: Rejection) -> None:
        index = member.index if parsed.batch else None
        self._dead_letter(plan, record, member_bytes(record.value, parsed, member), rejection, index)

    @staticmethod
    def _dead_letter(plan: _Plan, record: InboundRecord, value: bytes, rejection: Rejection, index: int | None) -> None:
        headers = [
            ("error.class", rejection.code.value.encode()),
            ("error.message", rejection.message[:2048].encode()),
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
        ]
        if index is not None:  # a member of a batch record
            headers.append(("source.index", str(index).encode()))
        if len(value) > DEAD_LETTER_VALUE_LIMIT:
            # The whole value would not fit the DLQ either; keep its head and say so.
            headers.append(("source.value_bytes", str(len(value)).encode()))
            value = value[:DEAD_LETTER_VALUE_LIMIT]
        # The original headers travel too: a binary-mode event's attributes live there.
        headers.extend((name, bytes(v)) for name, v in record.headers if not name.startswith(("error.", "source.")))
        plan.dead_letters.append(DeadLetter(record.key, value, headers, rejection.code))
        plan.stats.dead_lettered += 1
        plan.stats.by_error[rejection.code.value] = plan.stats.by_error.get(rejection.code.value, 0) + 1


def _data_json(raw: dict) -> str:
    return orjson.dumps(raw.get("data", {})).decode()
