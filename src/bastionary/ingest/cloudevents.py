"""The usage contract: CloudEvents 1.0 in structured, batch or binary mode.

A Kafka record becomes a list of members; each member is either a validated
:class:`UsageEvent` or a :class:`Rejection`. Validation depends only on the record (its
bytes, headers and broker timestamp), never on the wall clock, so a replayed record is
judged exactly as it was the first time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from hashlib import blake2b
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from bastionary.ingest.errors import ErrorClass, Rejection

REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time")
# The range of ClickHouse DateTime, which the 1-minute rollup windows use.
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2106, 1, 1, tzinfo=timezone.utc)


class UsageEvent(BaseModel):
    """One usage event. ``subject`` is the customer id; (``source``, ``id``) is the dedupe key."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: StrictStr = Field(min_length=1, max_length=512)
    source: StrictStr = Field(min_length=1, max_length=1024)
    type: StrictStr = Field(min_length=1, max_length=256)
    subject: StrictStr = Field(min_length=1, max_length=256)
    time: AwareDatetime
    data: dict[str, Any] = Field(default_factory=dict)
    datacontenttype: StrictStr | None = None
    dataschema: StrictStr | None = None

    @field_validator("time", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: Any) -> Any:
        # pydantic would read 1714564740 as a Unix time; the contract is RFC 3339 text.
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str) or value.strip().lstrip("+-").replace(".", "").isdigit():
            raise ValueError("must be an RFC 3339 timestamp string")
        return value

    @field_validator("time")
    @classmethod
    def _storable(cls, value: datetime) -> datetime:
        if not _EARLIEST <= value < _LATEST:
            raise ValueError("must fall within 1970-01-01 .. 2105-12-31 UTC (the rollup window range)")
        return value


@dataclass(slots=True)
class RecordMember:
    """One event of a record: ``index`` is its position in a batch (0 for single events)."""

    index: int
    raw: Any  # the decoded JSON member, kept to rebuild the dead letter's value
    event: UsageEvent | None = None
    payload_hash: bytes = b""
    rejection: Rejection | None = None


@dataclass(slots=True)
class ParsedRecord:
    members: list[RecordMember]
    rejection: Rejection | None = None  # the whole record was unusable
    batch: bool = False


def parse_record(
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    record_timestamp_ms: int,
    max_record_bytes: int,
    max_future_skew: timedelta,
) -> ParsedRecord:
    if value is None:
        return ParsedRecord([], Rejection(ErrorClass.INVALID_JSON, "record has no value (tombstone)"))
    if len(value) > max_record_bytes:
        return ParsedRecord(
            [], Rejection(ErrorClass.RECORD_TOO_LARGE, f"record is {len(value)} bytes; limit {max_record_bytes}")
        )
    binary_attrs = _binary_mode_attributes(headers)
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return ParsedRecord([], _decode_rejection(value, exc))
    if binary_attrs is not None:
        binary_attrs["data"] = decoded
        decoded = binary_attrs
    latest_allowed = datetime.fromtimestamp(record_timestamp_ms / 1000, tz=timezone.utc) + max_future_skew
    if isinstance(decoded, list):
        if not decoded:
            return ParsedRecord([], Rejection(ErrorClass.EMPTY_BATCH, "batch record holds no events"), batch=True)
        members = [_member(i, raw, latest_allowed) for i, raw in enumerate(decoded)]
        return ParsedRecord(members, batch=True)
    return ParsedRecord([_member(0, decoded, latest_allowed)])


def _member(index: int, raw: Any, latest_allowed: datetime) -> RecordMember:
    member = RecordMember(index=index, raw=raw)
    if not isinstance(raw, dict):
        member.rejection = Rejection(ErrorClass.NOT_CLOUDEVENT, f"expected a JSON object, got {type(raw).__name__}")
        return member
    try:
        event = UsageEvent.model_validate(raw)
    except ValidationError as exc:
        member.rejection = _validation_rejection(raw, exc)
        return member
    if event.time > latest_allowed:
        member.rejection = Rejection(
            ErrorClass.FUTURE_TIME, f"time {event.time.isoformat()} is after {latest_allowed.isoformat()}"
        )
        return member
    member.event = event
    member.payload_hash = payload_hash(raw, event)
    return member


def payload_hash(raw: dict[str, Any], event: UsageEvent) -> bytes:
    """A digest of the event as sent; equal digests mean a true repeat, not a conflict.

    ``time`` is hashed in its parsed form so that ``Z`` and ``+00:00`` spell the same event.
    """
    canonical = dict(raw)
    canonical["time"] = event.time.astimezone(timezone.utc).isoformat()
    return blake2b(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _validation_rejection(raw: dict[str, Any], exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False)
    time_errors = [e for e in errors if e["loc"][:1] == ("time",) and e["type"] != "missing"]
    if time_errors and len(time_errors) == len(errors):
        return Rejection(ErrorClass.INVALID_TIME, f"time {raw.get('time')!r} is not RFC 3339: {time_errors[0]['msg']}")
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return Rejection(ErrorClass.NOT_CLOUDEVENT, detail)


def _decode_rejection(value: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejection(ErrorClass.INVALID_ENCODING, f"value is not UTF-8: {uexc.reason} at byte {uexc.start}")
    return Rejection(ErrorClass.INVALID_JSON, f"value is not JSON: {exc}")


def _binary_mode_attributes(headers: list[tuple[str, bytes]] | None) -> dict[str, Any] | None:
    """CloudEvents Kafka binary mode: attributes in ``ce_*`` headers, ``data`` in the value."""
    if not headers:
        return None
    attrs: dict[str, Any] = {}
    for name, value in headers:
        if name.startswith("ce_"):
            attrs[name[3:]] = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    if "specversion" not in attrs:
        return None
    return attrs


def member_bytes(record_value: bytes, parsed: ParsedRecord, member: RecordMember) -> bytes:
    """What a dead letter carries: the record's own bytes, or the member re-encoded for a batch."""
    if not parsed.batch:
        return record_value
    return orjson.dumps(member.raw)
