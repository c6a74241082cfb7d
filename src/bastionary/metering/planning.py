"""Planning a flush: a pure function of its records and the dedupe state before them.

Nothing here writes anything: the sink lands a :class:`FlushPlan` in the order that makes
it exactly once (see :mod:`bastionary.metering.sink`). Per record, the work that depends on
the record alone runs inside a guard, so whatever a record holds ends as rows or as a dead
letter, ``internal_error`` included; dedupe verdicts come after, in member order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import structlog

from bastionary.dedupe import Sighting, Verdict, judge
from bastionary.ingest.cloudevents import (
    ParsedRecord,
    RecordLimits,
    RecordMember,
    ValidUsageEvent,
    member_bytes,
    parse_record,
)
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.ports import DedupeCache, EventRow, RollupRow
from bastionary.metering.readings import MeterIndex, Reading
from bastionary.metering.records import DeadLetter, FlushStats, InboundRecord
from bastionary.metering.rollup import RollupBuilder
from bastionary.outbound import Source, dead_letter_headers

log = structlog.get_logger(__name__)

DEAD_LETTER_VALUE_LIMIT = 64 * 1024


@dataclass
class FlushPlan:
    """Everything one flush of one partition will write, computed before anything is written."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: list[InboundRecord]
    event_rows: list[EventRow] = field(default_factory=list)
    rollup_rows: list[RollupRow] = field(default_factory=list)
    sightings: list[tuple[bytes, Sighting]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stats: FlushStats = field(default_factory=FlushStats)

    log_epoch: int = 0
    replayed: bool = False  # the range of a flush that may have landed before (see _recover)

    @property
    def token(self) -> str:
        return f"{self.topic}/{self.partition}@{self.log_epoch}/{self.first_offset}-{self.last_offset}"

    @property
    def last_fingerprint(self) -> int:
        return self.records[-1].fingerprint


@dataclass(slots=True)
class _Accepted:
    """A member that passed every check that needs no dedupe state."""

    member: RecordMember
    event: ValidUsageEvent
    key: bytes
    row: EventRow
    readings: list[Reading]


@dataclass(slots=True)
class _Examined:
    """One record, judged: rejected whole, or members accepted or rejected one by one."""

    parsed: ParsedRecord
    accepted: list[_Accepted] = field(default_factory=list)
    rejected: list[tuple[RecordMember, Rejection]] = field(default_factory=list)


class FlushPlanner:
    def __init__(self, meters: MeterIndex, dedupe: DedupeCache, limits: RecordLimits):
        self.meters = meters
        self.dedupe = dedupe
        self.limits = limits

    def plan(
        self, topic: str, partition: int, epoch: int, records: list[InboundRecord], replayed: bool = False
    ) -> FlushPlan:
        plan = FlushPlan(
            topic, partition, records[0].offset, records[-1].offset, records, log_epoch=epoch, replayed=replayed
        )
        rollups = RollupBuilder()
        in_flush: dict[bytes, Sighting] = {}
        for record in records:
            plan.stats.records += 1
            try:
                examined = self._examine(record, epoch)
            except Exception as exc:  # a bug of ours: this record is dead-lettered, the partition goes on
                log.exception(
                    "record could not be processed; dead-lettered as internal_error",
                    topic=topic,
                    partition=partition,
                    offset=record.offset,
                )
                self._dead_letter(plan, record, record.value or b"", _internal_error(exc), None, type(exc).__name__)
                continue
            self._settle(plan, record, examined, rollups, in_flush)
        plan.rollup_rows = rollups.rows()
        return plan

    def _examine(self, record: InboundRecord, epoch: int) -> _Examined:
        """Everything about one record that depends on the record alone."""
        parsed = parse_record(record.value, record.headers, record.timestamp_ms, self.limits, record.key)
        examined = _Examined(parsed)
        if parsed.rejection is not None:
            return examined
        ingested_at = datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC)
        for member in parsed.members:
            event = member.event
            if event is None:
                examined.rejected.append((member, member.rejection or _internal_error(None)))
                continue
            try:
                readings = self.meters.readings(event, partial(parsed.exact_data, member.index))
            except Rejection as rejection:
                examined.rejected.append((member, rejection))
                continue
            # Positional, in the column order: keyword arguments cost a NamedTuple more than
            # twice as much, on the one line every event passes.
            row = EventRow(
                event.id,
                event.source,
                event.type,
                event.subject,  # customer_id
                event.time,
                parsed.stored_data(member),
                member.payload_hash.hex(),
                ingested_at,
                record.topic,
                epoch,
                record.partition,
                record.offset,
                member.index,
            )
            key = self.dedupe.key(record.topic, record.partition, event.source, event.id)
            examined.accepted.append(_Accepted(member, event, key, row, readings))
        return examined

    def _settle(
        self,
        plan: FlushPlan,
        record: InboundRecord,
        examined: _Examined,
        rollups: RollupBuilder,
        in_flush: dict[bytes, Sighting],
    ) -> None:
        """Dedupe verdicts and the record's share of the flush, in member order."""
        parsed = examined.parsed
        if parsed.rejection is not None:
            self._dead_letter(plan, record, record.value or b"", parsed.rejection, None)
            return
        for member, rejection in examined.rejected:
            self._reject_member(plan, record, parsed, member, rejection)
        seen_at = record.timestamp_ms // 1000  # also the record's ingested second
        for accepted in examined.accepted:
            member, event = accepted.member, accepted.event
            current = Sighting(record.offset, member.index, seen_at, member.payload_hash, plan.log_epoch)
            previous = in_flush.get(accepted.key) or self.dedupe.get(accepted.key, seen_at)
            verdict = judge(previous, current)
            if verdict is Verdict.DUPLICATE:
                plan.stats.duplicates += 1
                continue
            if verdict is Verdict.CONFLICT and previous is not None:
                conflict = Rejection(
                    ErrorClass.DUPLICATE_CONFLICT,
                    f"(source, id) = ({event.source}, {event.id}) was first seen at offset"
                    f" {previous.offset} (epoch {previous.log_epoch}) with another payload; the first one counts",
                )
                self._reject_member(plan, record, parsed, member, conflict)
                continue
            in_flush[accepted.key] = previous or current
            plan.sightings.append((accepted.key, current))
            plan.stats.accepted += 1
            plan.event_rows.append(accepted.row)
            if accepted.readings:
                event_second = int(event.time.timestamp())
                for reading in accepted.readings:
                    rollups.add_at(event.subject, event.time, event_second, reading, seen_at)

    def _reject_member(
        self, plan: FlushPlan, record: InboundRecord, parsed: ParsedRecord, member: RecordMember, rejection: Rejection
    ) -> None:
        index = member.index if parsed.batch else None
        self._dead_letter(plan, record, member_bytes(record.value or b"", parsed, member), rejection, index)

    @staticmethod
    def _dead_letter(
        plan: FlushPlan,
        record: InboundRecord,
        value: bytes,
        rejection: Rejection,
        index: int | None,
        exception_type: str | None = None,
    ) -> None:
        source = Source(record.topic, record.partition, record.offset, index)
        headers = dead_letter_headers(rejection.code.value, rejection.message, source, exception=exception_type)
        if len(value) > DEAD_LETTER_VALUE_LIMIT:
            # The whole value would not fit the DLQ either; keep its head and say so.
            headers.append(("source.value_bytes", str(len(value)).encode()))
            value = value[:DEAD_LETTER_VALUE_LIMIT]
        # The original headers travel too: a binary-mode event's attributes live there. A name
        # the transport could only decode with escapes is written with visible escapes.
        headers.extend(
            (_printable_header_name(name), None if v is None else bytes(v))
            for name, v in record.headers
            if not name.startswith(("error.", "source."))
        )
        plan.dead_letters.append(DeadLetter(record.key, value, headers, rejection.code))
        plan.stats.dead_lettered += 1
        plan.stats.by_error[rejection.code.value] = plan.stats.by_error.get(rejection.code.value, 0) + 1


def _internal_error(exc: BaseException | None) -> Rejection:
    detail = f"{type(exc).__name__}: {exc}" if exc is not None else "a member with neither an event nor a rejection"
    return Rejection(ErrorClass.INTERNAL_ERROR, f"internal error while processing this record ({detail[:500]})")


def _printable_header_name(name: str) -> str:
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
