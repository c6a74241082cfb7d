"""Planning a flush: a pure function of its records and the dedupe state before them.

Nothing here writes anything: the sink lands a :class:`FlushPlan` in the order that makes
it exactly once (see :mod:`bastionary.metering.sink`). Per record, the work that depends on
the record alone (:mod:`bastionary.metering.examine`, here or in another process) runs inside
a guard, so whatever a record holds ends as rows or as a dead letter, ``internal_error``
included; dedupe verdicts come after, in member order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, NamedTuple

import orjson
import structlog

from bastionary.dedupe import Sighting, Verdict, judge
from bastionary.ingest.cloudevents import RecordLimits, reencoded_member
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.examine import Accepted, Examined, examine, internal_error
from bastionary.metering.ports import DedupeCache, EventRow, MarkerRow, RollupRow
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import DeadLetter, FlushStats, InboundRecord
from bastionary.metering.rollup import EPOCH, RollupBuilder
from bastionary.outbound import Headers, Source, capped_original, dead_letter_headers

log = structlog.get_logger(__name__)

# The original headers one dead letter carries, counted as names, values and _HEADER_OVERHEAD
# each. Twice what a binary-mode event's id, source, type and subject take at their contract
# limits in 4-byte characters (8 KiB). Per dead letter: a batch of 10,000 rejected members
# still sends up to 10,000 times this.
DEAD_LETTER_HEADERS_LIMIT = 16 * 1024
_HEADER_OVERHEAD = 10  # a header's two length varints in a Kafka record, at most
_EXCEPTION_NAME_LIMIT = 200
# What one dead letter can weigh on the wire, all caps together (key, value, the error.* and
# source.* headers, the original headers, record framing): well under Faust's default
# producer_max_request_size of 1,000,000, which the worker keeps.
DEAD_LETTER_MAX_BYTES = 128 * 1024
_SECOND = timedelta(seconds=1)

# Records are settled in groups of about this many events (a record without accepted events
# counts as one): the stored sightings of a group's keys are looked up in one multi-get per
# second the records arrived in (the dedupe horizon counts from each record's own second), and
# settling stays record by record, in order. A store call costs microseconds whatever it asks
# for, and a single-event record paid one for its one key: over the stage bench's single-event
# workload (2026-12-06), 3.8 us per record in get_many, 0.9 grouped. A batch record of 100
# events is about a group alone, as before: bigger multi-gets were no cheaper per key (12,800
# keys at a time 1.12 us per key, against 0.89-1.0 at 100-3,000, half of them stored).
LOOKUP_GROUP_EVENTS = 100


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
    last_fingerprint: int = 0  # of the last record: the partition's anchor once this has landed
    rollup_customers: frozenset[str] = frozenset()  # every customer with a rollup row here
    # None: rollup_rows holds every row. A plan back from a flush process may hold only the rows
    # of these customers (the ones the worker's listeners asked for); every row is still written.
    rows_of: frozenset[str] | None = None

    @property
    def token(self) -> str:
        return f"{self.topic}/{self.partition}@{self.log_epoch}/{self.first_offset}-{self.last_offset}"

    def marker(self, worker_id: str, written_at: datetime) -> MarkerRow:
        """The ``ingest_progress`` row written before this flush's data."""
        return MarkerRow(
            topic=self.topic,
            log_epoch=self.log_epoch,
            partition=self.partition,
            first_offset=self.first_offset,
            last_offset=self.last_offset,
            records=self.stats.records,
            events_accepted=self.stats.accepted,
            duplicates=self.stats.duplicates,
            dead_lettered=self.stats.dead_lettered,
            worker_id=worker_id,
            written_at=written_at,
            last_fingerprint=self.last_fingerprint,
        )


Examiner = Callable[[list[InboundRecord], int], Iterable[Examined]]
"""Examines a flush's records (with the flush's log epoch), yielding results in record order."""


def examine_here(meters: MeterIndex, limits: RecordLimits) -> Examiner:
    """The default :data:`Examiner`: in this process, one record at a time."""

    def examine_all(records: list[InboundRecord], epoch: int) -> Iterator[Examined]:
        for record in records:
            yield examine(record, epoch, meters, limits)

    return examine_all


class FlushPlanner:
    def __init__(self, meters: MeterIndex, dedupe: DedupeCache, limits: RecordLimits, examiner: Examiner | None = None):
        self.dedupe = dedupe
        self.examiner = examiner or examine_here(meters, limits)
        # The capped original headers of the record last dead-lettered: a batch's rejected
        # members share them (choosing them anew per member took a 10,000-member plan from
        # 0.24 s to 3.4 s).
        self._headers_of: tuple[InboundRecord | None, _CappedHeaders] = (None, _NO_HEADERS)

    def plan(
        self, topic: str, partition: int, epoch: int, records: list[InboundRecord], replays_from: int | None = None
    ) -> FlushPlan:
        """``replays_from``: the first offset of the range this flush replays. The plan starts
        there even if the log no longer holds the range's first records (retention removed
        them), so its token is the one the range landed under, and ClickHouse drops what had."""
        plan = FlushPlan(
            topic,
            partition,
            records[0].offset if replays_from is None else replays_from,
            records[-1].offset,
            records,
            log_epoch=epoch,
            replayed=replays_from is not None,
        )
        # Raising here would fail the whole flush, and the record would be the last of the same
        # range after a restart: a crash loop. It costs that record instead, and an anchor of 0,
        # which the next log check trusts as the same log until a later flush anchors it anew.
        last = records[-1]
        self._headers_of = (None, _NO_HEADERS)  # a record of an earlier plan is not held on to
        unanchored = _anchor(plan, last)
        rejected_last = False
        rollups = RollupBuilder()
        in_flush: dict[bytes, Sighting] = {}
        examined_records = iter(self.examiner(records, epoch))
        group: list[tuple[InboundRecord, Examined]] = []
        group_events = 0
        for record in records:
            plan.stats.records += 1
            examined = next(examined_records)
            if unanchored is not None and record is last and not rejected_last:
                rejected_last = True
                if examined.failure is None and examined.rejection is None:
                    examined = Examined(rejection=unanchored)
            group.append((record, examined))
            group_events += len(examined.accepted) or 1
            if group_events >= LOOKUP_GROUP_EVENTS:
                self._settle_group(plan, group, rollups, in_flush)
                group, group_events = [], 0
        if group:
            self._settle_group(plan, group, rollups, in_flush)
        plan.rollup_rows = rollups.rows()
        plan.rollup_customers = frozenset(row.customer_id for row in plan.rollup_rows)
        return plan

    def _settle_group(
        self,
        plan: FlushPlan,
        group: list[tuple[InboundRecord, Examined]],
        rollups: RollupBuilder,
        in_flush: dict[bytes, Sighting],
    ) -> None:
        """Each record of ``group`` settled in order, after one lookup of all their keys."""
        keyed_records = [self._keyed(record, examined) for record, examined in group]
        by_second: dict[int, list[bytes]] = {}
        for (record, _), keyed in zip(group, keyed_records, strict=True):
            if keyed.keys:
                by_second.setdefault(record.timestamp_ms // 1000, []).extend(keyed.keys)
        # The store does not change during a plan, so every key can be read before any is
        # judged; a key met earlier in the flush (in_flush) still wins over what it stored.
        stored = {second: iter(self.dedupe.get_many(keys, second)) for second, keys in by_second.items()}
        for (record, examined), keyed in zip(group, keyed_records, strict=True):
            if examined.failure is not None:  # a bug of ours: this record is dead-lettered, the partition goes on
                exception_type, detail = examined.failure
                self._dead_letter(plan, record, record.value or b"", internal_error(detail), None, exception_type)
                continue
            found = list(islice(stored[record.timestamp_ms // 1000], len(keyed.keys))) if keyed.keys else []
            self._settle(plan, record, examined, keyed, found, rollups, in_flush)

    def _settle(
        self,
        plan: FlushPlan,
        record: InboundRecord,
        examined: Examined,
        keyed_members: _Keyed,
        stored: list[Sighting | None],
        rollups: RollupBuilder,
        in_flush: dict[bytes, Sighting],
    ) -> None:
        """Dedupe verdicts and the record's share of the flush, in member order. ``stored``:
        what the dedupe store holds for each of ``keyed_members``' keys."""
        if examined.rejection is not None:
            self._dead_letter(plan, record, record.value or b"", examined.rejection, None)
            return
        members = _MemberValues(record.value or b"", examined.batch)
        for index, rejection in examined.rejected:
            self._reject_member(plan, record, members, index, rejection)
        for index, failure in keyed_members.failures:
            self._reject_member(plan, record, members, index, failure)
        seen_at = record.timestamp_ms // 1000  # also the record's ingested second
        # A first sighting from before the horizon is gone for all purposes: the store says so of
        # what it holds, and this says so of one met earlier in the flush (a backlog or a
        # re-import can hold both copies), so a copy's verdict does not depend on where the
        # flushes were cut.
        oldest = seen_at - self.dedupe.horizon_seconds
        newest_repeat = seen_at + self.dedupe.horizon_seconds
        replayed_through = plan.last_offset if plan.replayed else -1  # no stored sighting is in a range
        # Names taken once per record: the loop below runs for every event of a flush.
        offset, epoch = record.offset, plan.log_epoch
        keyed, keys = keyed_members.members, keyed_members.keys
        add_rollups = rollups.add_event
        sightings, event_rows = plan.sightings, plan.event_rows
        for accepted, key, previous in zip(keyed, keys, stored, strict=True):
            row = accepted.row
            current = Sighting(offset, accepted.index, seen_at, accepted.payload_hash, epoch)
            previous = in_flush.get(key) or previous
            if previous is not None:  # most keys are new, and a new one needs no judging
                if previous.position > current.position:
                    # A replay whose events had landed: recovery read this range's own sightings
                    # back, and a copy counted further on in it replaced the one this copy was
                    # judged against (or that one is past the refill's horizon). Had this copy
                    # counted, the later one would have been its repeat unless it came more than
                    # the horizon after it; so it had not. Counted now, it went into the rollups
                    # a second time (a crash between the events and the rollups). Its dead
                    # letter, if it was a conflict, was sent before the events.
                    in_replayed_range = previous.offset <= replayed_through and previous.log_epoch == epoch
                    if in_replayed_range and previous.seen_at <= newest_repeat:
                        plan.stats.duplicates += 1
                        continue
                    # Counted here: a later copy in this flush is judged against this one, not
                    # against a sighting from further on in the log.
                    previous = None
                elif previous.seen_at < oldest:  # past the horizon: a new event
                    previous = None
                else:
                    verdict = judge(previous, current)
                    if verdict is Verdict.DUPLICATE:
                        plan.stats.duplicates += 1
                        continue
                    if verdict is Verdict.CONFLICT:
                        conflict = Rejection(
                            ErrorClass.DUPLICATE_CONFLICT,
                            f"(source, id) = ({row.source}, {row.event_id}) was first seen at offset"
                            f" {previous.offset} (epoch {previous.log_epoch}) with another payload; the first one counts",
                        )
                        self._reject_member(plan, record, members, accepted.index, conflict)
                        continue
            in_flush[key] = previous or current
            sightings.append((key, current))
            event_rows.append(row)
            if accepted.readings:
                event_time = row.time
                # Exact integer seconds (the time is at or after 1970), cheaper than timestamp().
                add_rollups(row.customer_id, event_time, (event_time - EPOCH) // _SECOND, accepted.readings, seen_at)
        plan.stats.accepted = len(event_rows)

    def _keyed(self, record: InboundRecord, examined: Examined) -> _Keyed:
        """The record's accepted members that have a dedupe key, and their keys; a member without
        one is to be dead-lettered (by :meth:`_settle`, in the record's order of dead letters)."""
        if examined.failure is not None or examined.rejection is not None or not examined.accepted:
            return _NOTHING_KEYED
        key_of, topic, partition = self.dedupe.key, record.topic, record.partition
        keyed = _Keyed([], [], [])
        members, keys = keyed.members, keyed.keys
        for member in examined.accepted:
            row = member.row
            try:
                key = key_of(topic, partition, row.source, row.event_id)
            except Exception as exc:  # a bug of ours (the key is built from checked text): it costs this member
                log.exception("no dedupe key for an event; dead-lettered as internal_error", offset=record.offset)
                keyed.failures.append((member.index, internal_error(f"{type(exc).__name__}: {exc}")))
                continue
            members.append(member)
            keys.append(key)
        return keyed

    def _reject_member(
        self, plan: FlushPlan, record: InboundRecord, members: _MemberValues, index: int, rejection: Rejection
    ) -> None:
        self._dead_letter(plan, record, members.value_of(index), rejection, index if members.batch else None)

    def _dead_letter(
        self,
        plan: FlushPlan,
        record: InboundRecord,
        value: bytes,
        rejection: Rejection,
        index: int | None,
        exception_type: str | None = None,
    ) -> None:
        source = Source(record.topic, record.partition, record.offset, index)
        if exception_type is not None:
            exception_type = exception_type[:_EXCEPTION_NAME_LIMIT]
        headers = dead_letter_headers(rejection.code.value, rejection.message, source, exception=exception_type)
        # Every part of a dead letter is capped: one the producer refuses (its max request
        # size counts key, value and headers) would fail the flush, and every replay of it.
        key, value = capped_original(record.key, value, headers)
        # The original headers travel too: a binary-mode event's attributes live there. A name
        # the transport could only decode with escapes is written with visible escapes. They
        # are capped per dead letter: a batch copies them onto each rejected member.
        cached, capped = self._headers_of
        if cached is not record:
            capped = _original_headers(record)
            self._headers_of = (record, capped)
        original, dropped, dropped_bytes = capped
        if dropped:
            headers.append(("source.headers_dropped_bytes", str(dropped_bytes).encode()))
        headers.extend(original)
        plan.dead_letters.append(DeadLetter(key, value, headers, rejection.code))
        plan.stats.dead_lettered += 1
        plan.stats.by_error[rejection.code.value] = plan.stats.by_error.get(rejection.code.value, 0) + 1


def _anchor(plan: FlushPlan, record: InboundRecord) -> Rejection | None:
    """Sets the plan's anchor fingerprint from its last record; the reason that record must be
    dead-lettered if it has none (its examination may already have rejected it the same way)."""
    try:
        plan.last_fingerprint = record.fingerprint
        return None
    except Exception as exc:
        log.warning(
            "no fingerprint for the last record of a flush; anchored without one",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=f"{type(exc).__name__}: {exc}",
        )
        if isinstance(exc, OverflowError):  # the timestamp does not fit Kafka's int64
            return Rejection(
                ErrorClass.INVALID_RECORD_TIMESTAMP,
                f"the record's Kafka timestamp {record.timestamp_ms} ms is outside 1970-01-01 .. 2105-12-31",
            )
        return internal_error(f"{type(exc).__name__}: {exc}")


class _CappedHeaders(NamedTuple):
    kept: Headers
    dropped: int
    dropped_bytes: int


_NO_HEADERS = _CappedHeaders([], 0, 0)


def _original_headers(record: InboundRecord) -> _CappedHeaders:
    """The record's own headers a dead letter carries, within :data:`DEAD_LETTER_HEADERS_LIMIT`,
    in their order; and how many were left out, and their names' and values' bytes."""
    candidates = [
        (_printable_header_name(name), None if v is None else bytes(v))
        for name, v in record.headers
        if not name.startswith(("error.", "source."))
    ]
    sizes = [len(name.encode()) + len(v or b"") + _HEADER_OVERHEAD for name, v in candidates]
    if sum(sizes) <= DEAD_LETTER_HEADERS_LIMIT:
        return _CappedHeaders(candidates, 0, 0)
    # A binary-mode event's attributes are the ones worth keeping: they are the event.
    by_priority = sorted(range(len(candidates)), key=lambda i: not _well_known(candidates[i][0]))
    kept: set[int] = set()
    room = DEAD_LETTER_HEADERS_LIMIT
    for i in by_priority:
        if sizes[i] <= room:
            kept.add(i)
            room -= sizes[i]
    dropped = [i for i in range(len(candidates)) if i not in kept]
    dropped_bytes = sum(sizes[i] - _HEADER_OVERHEAD for i in dropped)
    return _CappedHeaders([candidates[i] for i in sorted(kept)], len(dropped), dropped_bytes)


def _well_known(name: str) -> bool:
    return name.startswith("ce_") or name.lower() == "content-type"


class _Keyed(NamedTuple):
    """A record's accepted members with a dedupe key, their keys (in the same order: the keys
    go to the store as they are), and the members whose key could not be built."""

    members: list[Accepted]
    keys: list[bytes]
    failures: list[tuple[int, Rejection]]


_NOTHING_KEYED = _Keyed([], [], [])  # never appended to: _keyed returns it only unchanged


class _MemberValues:
    """What a member's dead letter carries: the record's own bytes, or the member re-encoded
    for a batch (decoded once per record, and only when a member is rejected)."""

    def __init__(self, value: bytes, batch: bool):
        self.value = value
        self.batch = batch
        self._members: list[Any] | None = None

    def value_of(self, index: int) -> bytes:
        if not self.batch:
            return self.value
        if self._members is None:
            # It decoded as a JSON array when it was examined, with the same decoder.
            self._members = orjson.loads(self.value)
        return reencoded_member(self._members[index])  # b"" if too deep: source.index still points at it


def _printable_header_name(name: str) -> str:
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
