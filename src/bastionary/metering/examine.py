"""The record-local part of planning: what one record holds, judged without any dedupe state.

:func:`examine` is a pure function of the record's fields and the meters, and its result
(:class:`Examined`) holds plain values only (strings, numbers, bytes, rows), so it can be
computed in another process (:mod:`bastionary.metering.examine_pool`) and sent back. Dedupe
verdicts and everything that follows run in the worker (:mod:`bastionary.metering.planning`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from bastionary.ingest.cloudevents import RecordLimits, parse_record
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.ports import EventRow, new_row
from bastionary.metering.readings import MeterIndex, Reading
from bastionary.metering.records import InboundRecord

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Accepted:
    """A member that passed every check that needs no dedupe state."""

    index: int
    payload_hash: bytes
    row: EventRow  # the row it lands as, if dedupe counts it
    readings: list[Reading]


@dataclass(slots=True)
class Examined:
    """One record, judged: rejected whole, or members accepted or rejected one by one."""

    rejection: Rejection | None = None  # the whole record
    batch: bool = False
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)  # (member index, why)
    failure: tuple[str, str] | None = None  # a bug of ours met the record: (exception type, detail)


def examine(record: InboundRecord, epoch: int, meters: MeterIndex, limits: RecordLimits) -> Examined:
    """Never raises: a bug of ours met by this record comes back as :attr:`Examined.failure`."""
    try:
        return _examine(record, epoch, meters, limits)
    except Exception as exc:
        log.exception(
            "record could not be processed; dead-lettered as internal_error",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        return Examined(failure=(type(exc).__name__, f"{type(exc).__name__}: {exc}"))


def _examine(record: InboundRecord, epoch: int, meters: MeterIndex, limits: RecordLimits) -> Examined:
    parsed = parse_record(record.value, record.headers, record.timestamp_ms, limits, record.key)
    examined = Examined(parsed.rejection, parsed.batch)
    if parsed.rejection is not None:
        return examined
    ingested_at = ingested_at_of(record)
    for member in parsed.members:
        event = member.event
        if event is None:
            examined.rejected.append((member.index, member.rejection or internal_error(None)))
            continue
        try:
            readings = meters.readings(event, parsed.exact_data, member.index)
        except Rejection as rejection:
            examined.rejected.append((member.index, rejection))
            continue
        # Every field, in the column order, through tuple.__new__ (see ports.new_row).
        row = new_row(
            EventRow,
            (
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
            ),
        )
        examined.accepted.append(Accepted(member.index, member.payload_hash, row, readings))
    return examined


def ingested_at_of(record: InboundRecord) -> datetime:
    """The record's broker time, as ``usage_events.ingested_at`` holds it."""
    return datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC)


def internal_error(detail: str | None) -> Rejection:
    detail = detail or "a member with neither an event nor a rejection"
    return Rejection(ErrorClass.INTERNAL_ERROR, f"internal error while processing this record ({detail[:500]})")
