"""The usage contract: CloudEvents 1.0 in structured, batch or binary mode.

A Kafka record becomes a list of members; each member is either a validated
:class:`UsageEvent` or a :class:`Rejection`. Validation depends only on the record (its
key, bytes, headers and broker timestamp), never on the wall clock, so a replayed record is
judged exactly as it was the first time. Whatever bytes arrive, :func:`parse_record`
returns; it never raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, DecimalException
from hashlib import blake2b
from sys import intern
from typing import Any, Literal

import msgspec
import orjson
from msgspec import UNSET
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from bastionary.ingest.common_shape import CommonEvent, decode_common
from bastionary.ingest.errors import ErrorClass, Rejection

REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time")
# The range of ClickHouse DateTime, which the 1-minute rollup windows use.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2106, 1, 1, tzinfo=UTC)
_LATEST_MS = int(_LATEST.timestamp() * 1000)
# orjson serialises at most 254 nested levels; the payload hash serialises each event, so an
# event nested deeper is rejected by that limit, the same way on every run (a replay must
# judge a record as before). tests/unit/test_cloudevents.py pins the number.
MAX_NESTING_DEPTH = 254
# orjson decodes at most this many levels: a record nested deeper is refused whole.
MAX_RECORD_NESTING_DEPTH = 1024


def exact_number(text: str) -> Decimal:
    """A JSON number with a fraction or an exponent, with every digit it spells."""
    try:
        return Decimal(text)
    except DecimalException:
        # An exponent past what Decimal holds (0e-9999999999999999999 is JSON, and orjson reads
        # it as 0.0) signalled InvalidOperation, which no caller expected: the worker
        # dead-lettered the whole record as internal_error, every good member of its batch with
        # it. As a ValueError it is what an over-long integer literal is already: the member's
        # value_out_of_range.
        raise ValueError(f"the number {text[:40]} has an exponent past any exact decimal") from None


_EXACT_JSON = msgspec.json.Decoder(float_hook=exact_number)
_EXACT_ENCODER = msgspec.json.Encoder(decimal_format="number")
_RAW_MEMBERS = msgspec.json.Decoder(list[msgspec.Raw])
# A JSON string, or one of the characters that open, close or separate values.
_JSON_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')
# The longest id, source, type and subject the contract takes, in characters.
_ID_LONGEST, _SOURCE_LONGEST, _TYPE_LONGEST, _SUBJECT_LONGEST = 512, 1024, 256, 256


@dataclass(frozen=True, slots=True)
class RecordLimits:
    max_record_bytes: int
    max_batch_events: int
    max_future_skew: timedelta


class UsageEvent(BaseModel):
    """One usage event. ``subject`` is the customer id; (``source``, ``id``) is the dedupe key."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: StrictStr = Field(min_length=1, max_length=_ID_LONGEST)
    source: StrictStr = Field(min_length=1, max_length=_SOURCE_LONGEST)
    type: StrictStr = Field(min_length=1, max_length=_TYPE_LONGEST)
    subject: StrictStr = Field(min_length=1, max_length=_SUBJECT_LONGEST)
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


@dataclass(slots=True)  # not frozen: a frozen __init__ costs several times more; never changed
class ValidUsageEvent:
    """A member that meets :class:`UsageEvent`'s contract, as the hot path carries it.

    :class:`UsageEvent` is the contract (its JSON Schema is published); building one per event
    costs more than everything else an event needs, so the common shape is checked by
    :func:`_checked_fast` and only the rest goes through pydantic (see :func:`_member`).
    """

    id: str
    source: str
    type: str
    subject: str  # the customer id
    time: datetime
    data: dict[str, Any]
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, event: UsageEvent) -> ValidUsageEvent:
        return cls(
            event.id,
            intern(event.source),  # as _checked_fast does
            intern(event.type),
            intern(event.subject),
            event.time,
            event.data,
            event.datacontenttype,
            event.dataschema,
            dict(event.model_extra or {}),
        )


@dataclass(slots=True)
class RecordMember:
    """One event of a record: ``index`` is its position in a batch (0 for single events)."""

    index: int
    raw: Any  # the decoded JSON member, kept to rebuild the dead letter's value
    event: ValidUsageEvent | None = None
    payload_hash: bytes = b""
    rejection: Rejection | None = None


def member_texts(value: bytes) -> list[bytes]:
    """The bytes of each member of a JSON array, found without recursion (``value`` is JSON:
    orjson decoded it), for a record whose nesting is past what msgspec's decoders reach."""
    texts: list[bytes] = []
    depth = start = 0
    for token in _JSON_STRUCTURE.finditer(value):
        char = value[token.start()]
        if char in b"[{":
            depth += 1
            if depth == 1:
                start = token.end()
        elif char in b"]}":
            depth -= 1
            if depth == 0 and (texts or value[start : token.start()].strip()):  # not "[]"
                texts.append(value[start : token.start()])
        elif char == ord(",") and depth == 1:
            texts.append(value[start : token.start()])
            start = token.end()
    return texts


@dataclass(slots=True)
class ParsedRecord:
    members: list[RecordMember]
    rejection: Rejection | None = None  # the whole record was unusable
    batch: bool = False
    value: bytes = b""
    binary: bool = False
    _exact: Any = field(default=None, repr=False)  # a single or binary record's value, decoded exactly
    # A batch's members, undecoded (cut apart as bytes when msgspec cannot reach a member's depth).
    _raw_members: list[msgspec.Raw] | list[bytes] | None = field(default=None, repr=False)
    _exact_members: dict[int, Any] = field(default_factory=dict, repr=False)  # a batch's, decoded exactly
    # Taken by the common shape's decode, whose members' data holds every number exactly already.
    exact_decoded: bool = False

    def exact_data(self, index: int) -> Any:
        """Member ``index``'s ``data`` decoded with every number exact (ints of any size,
        decimals as :class:`Decimal`), for the rare values orjson can only give as floats.

        Decoded once, on first use: a single or binary record whole, a batch member alone. A
        batch is split into its members' bytes once, which costs about a tenth of decoding
        them all, and most members of a batch need no exact decode. The record had already
        decoded as JSON, so neither decode meets a syntax error. A record of the common shape
        needs neither: its one-call decode kept every number's digits.
        """
        if self.exact_decoded:
            # Marked as read exactly, so that stored_data keeps its digits as the general path does.
            data = self._exact_members[index] = self.members[index].raw.get("data", {})
            return data
        if not self.batch:
            if self._exact is None:
                self._exact = _EXACT_JSON.decode(self.value)
            return self._exact if self.binary else self._exact.get("data", {})
        member = self._exact_members.get(index)
        if member is None:
            if self._raw_members is None:
                try:
                    self._raw_members = _RAW_MEMBERS.decode(self.value)
                except RecursionError:
                    # msgspec skips a value by recursion, about 1,000 levels (orjson took 1,024):
                    # one member nested that deep, rejected itself, made every sibling needing
                    # an exact decode raise, and the whole record was dead-lettered.
                    self._raw_members = member_texts(self.value)
            try:
                member = self._exact_members[index] = _EXACT_JSON.decode(self._raw_members[index])
            except RecursionError:
                raise Rejection(ErrorClass.NESTING_TOO_DEEP, "the event nests too deep to read exactly") from None
        return member.get("data", {})

    def stored_data(self, member: RecordMember) -> str:
        """The JSON text stored in ``usage_events.data``: exact digits wherever the member
        needed the exact decode, so the raw table re-derives every meter value."""
        if self._exact is not None or member.index in self._exact_members:
            return _EXACT_ENCODER.encode(self.exact_data(member.index)).decode()
        return orjson.dumps(member.raw.get("data", {}), default=as_float).decode()


def parse_record(
    value: bytes | None,
    headers: list[tuple[str, bytes | None]] | None,
    record_timestamp_ms: int,
    limits: RecordLimits,
    key: bytes | None = None,
) -> ParsedRecord:
    if value is None:
        return ParsedRecord([], Rejection(ErrorClass.INVALID_JSON, "record has no value (tombstone)"))
    if len(value) > limits.max_record_bytes:
        return ParsedRecord(
            [], Rejection(ErrorClass.RECORD_TOO_LARGE, f"record is {len(value)} bytes; limit {limits.max_record_bytes}")
        )
    if not 0 <= record_timestamp_ms < _LATEST_MS:
        return ParsedRecord(
            [],
            Rejection(
                ErrorClass.INVALID_RECORD_TIMESTAMP,
                f"the record's Kafka timestamp {record_timestamp_ms} ms is outside 1970-01-01 .. 2105-12-31",
            ),
        )
    if key is not None and not _is_utf8(key):
        return ParsedRecord([], Rejection(ErrorClass.INVALID_ENCODING, "record key is not UTF-8"))
    try:
        binary_attrs = _binary_mode_attributes(headers)
    except Rejection as refused:
        return ParsedRecord([], refused)
    latest_allowed = datetime.fromtimestamp(record_timestamp_ms / 1000, tz=UTC) + limits.max_future_skew
    if binary_attrs is None:
        common = _in_common_shape(value, latest_allowed, limits)
        if common is not None:
            return common
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return ParsedRecord([], _decode_rejection(value, exc))
    if binary_attrs is not None:
        binary_attrs["data"] = decoded
        return ParsedRecord([_member(0, binary_attrs, latest_allowed)], value=value, binary=True)
    if isinstance(decoded, list):
        if not decoded:
            return ParsedRecord([], Rejection(ErrorClass.EMPTY_BATCH, "batch record holds no events"), batch=True)
        if len(decoded) > limits.max_batch_events:
            rejection = Rejection(
                ErrorClass.BATCH_TOO_LARGE,
                f"batch holds {len(decoded)} events; limit {limits.max_batch_events} (BASTIONARY_MAX_BATCH_EVENTS)",
            )
            return ParsedRecord([], rejection, batch=True)
        members = [_member(i, raw, latest_allowed) for i, raw in enumerate(decoded)]
        return ParsedRecord(members, batch=True, value=value)
    return ParsedRecord([_member(0, decoded, latest_allowed)], value=value)


def _in_common_shape(value: bytes, latest_allowed: datetime, limits: RecordLimits) -> ParsedRecord | None:
    """The record, if it is of the common shape (:mod:`bastionary.ingest.common_shape`) and
    every member of it is accepted; else None, and the general path below judges it.

    The members it gives equal the general path's (a property test compares the two), so a
    replay judges a record the same whichever path took it. Only acceptance is decided here:
    anything to reject goes the general path, which words the rejection.
    """
    decoded = decode_common(value)
    if decoded is None:
        return None
    if not isinstance(decoded, list):
        member = _common_member(0, decoded, latest_allowed)
        return None if member is None else ParsedRecord([member], value=value, exact_decoded=True)
    if not 0 < len(decoded) <= limits.max_batch_events:
        return None
    members = []
    for index, shaped in enumerate(decoded):
        member = _common_member(index, shaped, latest_allowed)
        if member is None:
            return None
        members.append(member)
    return ParsedRecord(members, batch=True, value=value, exact_decoded=True)


def _common_member(index: int, shaped: CommonEvent, latest_allowed: datetime) -> RecordMember | None:
    """The accepted member, as :func:`_member` makes it from the same JSON, or None."""
    if shaped.specversion != "1.0":
        return None
    ident, source, kind, subject, text = shaped.id, shaped.source, shaped.type, shaped.subject, shaped.time
    if not (
        0 < len(ident) <= _ID_LONGEST
        and 0 < len(source) <= _SOURCE_LONGEST
        and 0 < len(kind) <= _TYPE_LONGEST
        and 0 < len(subject) <= _SUBJECT_LONGEST
    ):
        return None
    time = _fast_time(text)
    if time is None or time > latest_allowed:
        return None
    # The dict the general path decodes: the attributes sent, and only those. Its time is spelled
    # as hashed until the digest is taken (payload_hash would copy the dict to respell it).
    raw: dict[str, Any] = {"specversion": "1.0", "id": ident, "source": source, "type": kind, "subject": subject}
    raw["time"] = _canonical_zulu(text) or time.astimezone(UTC).isoformat()
    data, content_type, schema = shaped.data, shaped.datacontenttype, shaped.dataschema
    if data is UNSET:
        data = {}
    else:
        raw["data"] = data
    if content_type is UNSET:
        content_type = None
    else:
        raw["datacontenttype"] = content_type
    if schema is UNSET:
        schema = None
    else:
        raw["dataschema"] = schema
    try:
        digest = _digest(raw, wide_integers=False)
    except TypeError:
        # Too deep to encode, or an integer past 64 bits: orjson decodes the latter as a float
        # and msgspec as an int, so the two decodes differ and the general path must judge it.
        return None
    raw["time"] = text  # as sent
    event = ValidUsageEvent(ident, intern(source), intern(kind), intern(subject), time, data, content_type, schema, {})
    return RecordMember(index, raw, event, digest)


def _member(index: int, raw: Any, latest_allowed: datetime) -> RecordMember:
    member = RecordMember(index=index, raw=raw)
    if not isinstance(raw, dict):
        member.rejection = Rejection(ErrorClass.NOT_CLOUDEVENT, f"expected a JSON object, got {type(raw).__name__}")
        return member
    event = _checked_fast(raw)
    canonical_time = None if event is None else _canonical_zulu(raw["time"])
    if event is None:  # not the common shape: pydantic decides, and words any rejection
        try:
            event = ValidUsageEvent.of(UsageEvent.model_validate(raw))
        except ValidationError as exc:
            member.rejection = _validation_rejection(raw, exc)
            return member
    if event.time > latest_allowed:
        member.rejection = Rejection(
            ErrorClass.FUTURE_TIME, f"time {event.time.isoformat()} is after {latest_allowed.isoformat()}"
        )
        return member
    try:
        member.payload_hash = payload_hash(raw, event, canonical_time)
    except TypeError:  # orjson's "Recursion limit reached": deeper than MAX_NESTING_DEPTH
        member.rejection = Rejection(
            ErrorClass.NESTING_TOO_DEEP, f"the event nests more than {MAX_NESTING_DEPTH} levels deep"
        )
        return member
    member.event = event
    return member


# RFC 3339 as producers write it, ASCII digits only. Python's parser and pydantic's agree on
# every string of this shape that either accepts (tests/unit/test_cloudevents.py checks it).
# An offset's minutes are 00..59: Python reads +00:99 as +01:39, which pydantic and RFC 3339
# refuse, and the event's instant moved by up to 99 minutes.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-5][0-9])"
)
_ATTRIBUTE_LENGTHS = (
    ("id", _ID_LONGEST),
    ("source", _SOURCE_LONGEST),
    ("type", _TYPE_LONGEST),
    ("subject", _SUBJECT_LONGEST),
)
_DECLARED = frozenset(UsageEvent.model_fields)


def _checked_fast(raw: dict[str, Any]) -> ValidUsageEvent | None:
    """The event, if ``raw`` has the common shape and meets the contract; else None.

    None means "ask pydantic", never "rejected": this accepts a subset of what
    :class:`UsageEvent` accepts, with the same values, so a verdict never depends on which
    path judged it.
    """
    if raw.get("specversion") != "1.0":
        return None
    for name, longest in _ATTRIBUTE_LENGTHS:
        value = raw.get(name)
        if type(value) is not str or not 0 < len(value) <= longest:
            return None
    text = raw.get("time")
    if type(text) is not str:
        return None
    time = _fast_time(text)
    if time is None:
        return None
    data = raw.get("data", _ABSENT)
    if data is _ABSENT:
        data = {}
    elif type(data) is not dict:
        return None
    content_type, schema = raw.get("datacontenttype"), raw.get("dataschema")
    if (content_type is not None and type(content_type) is not str) or (schema is not None and type(schema) is not str):
        return None
    declared = 6 + ("data" in raw) + ("datacontenttype" in raw) + ("dataschema" in raw)
    extensions = {k: v for k, v in raw.items() if k not in _DECLARED} if len(raw) > declared else {}
    # source, type and subject repeat across a flush's events: one string each, not one per
    # event (sys.intern's strings go when the last row holding them goes).
    return ValidUsageEvent(
        raw["id"],
        intern(raw["source"]),
        intern(raw["type"]),
        intern(raw["subject"]),
        time,
        data,
        content_type,
        schema,
        extensions,
    )


_ABSENT = object()


def _fast_time(text: str) -> datetime | None:
    """``time`` parsed, if it is RFC 3339 as producers write it and storable; else None."""
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        time = datetime.fromisoformat(text)
    except ValueError:
        return None
    return time if _EARLIEST <= time < _LATEST else None


def payload_hash(
    raw: dict[str, Any],
    event: ValidUsageEvent | UsageEvent,
    canonical_time: str | None = None,
    *,
    wide_integers: bool = True,
) -> bytes:
    """A digest of the event as sent; equal digests mean a true repeat, not a conflict.

    ``time`` is hashed in its parsed form so that ``Z`` and ``+00:00`` spell the same event;
    ``canonical_time``, when given, is that form already. An integer past 64 bits raises
    TypeError, as deep nesting does, unless ``wide_integers``.
    """
    canonical = dict(raw)
    canonical["time"] = canonical_time or event.time.astimezone(UTC).isoformat()
    return _digest(canonical, wide_integers)


def _digest(canonical: dict[str, Any], wide_integers: bool) -> bytes:
    """:func:`payload_hash` of a dict whose ``time`` is spelled canonically already."""
    try:
        text = orjson.dumps(canonical, default=as_float, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        # An integer past 64 bits, which only an exact decode keeps: the stdlib encodes any.
        # The same event always takes the same branch, so its digest is stable. (Nesting past
        # orjson's limit is the caller's to reject, so that error goes on.)
        if "64-bit" not in str(exc) or not wide_integers:
            raise
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = _EMPTY_DIGEST.copy()  # a third cheaper than a new blake2b(digest_size=16), same digest
    digest.update(text)
    return digest.digest()


_EMPTY_DIGEST = blake2b(digest_size=16)  # never updated itself: only its copies are


def as_float(value: Any) -> float:
    """orjson's ``default``: a number the common shape decoded exactly (a Decimal) written as
    the float the general path's decode holds, so digests and stored text match either way.
    A number no float holds (``1e400``, which orjson refuses to decode) raises TypeError, so
    the record goes the general path."""
    if type(value) is Decimal:
        number = float(value)
        if math.isfinite(number):
            return number
    raise TypeError(f"not serialisable as JSON: {type(value).__name__}")


def _canonical_zulu(text: str) -> str | None:
    """The hashed spelling of a time :func:`_checked_fast` accepted, where reading it off the
    text is safe: UTC as ``Z`` or ``+00:00`` (what Python's ``isoformat`` writes), with no
    fraction or with 6 digits not all zero (else None)."""
    if text[-1] == "Z" and (len(text) == 20 or (len(text) == 27 and text[20:26] != "000000")):
        return text[:-1] + "+00:00"
    if text.endswith("+00:00") and (len(text) == 25 or (len(text) == 32 and text[20:26] != "000000")):
        return text
    return None


def _validation_rejection(raw: dict[str, Any], exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False)
    time_errors = [e for e in errors if e["loc"][:1] == ("time",) and e["type"] != "missing"]
    if time_errors and len(time_errors) == len(errors):
        return Rejection(
            ErrorClass.INVALID_TIME, f"time {_preview(raw.get('time'))} is not RFC 3339: {time_errors[0]['msg']}"
        )
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return Rejection(ErrorClass.NOT_CLOUDEVENT, detail)


def _preview(value: Any) -> str:
    """A bounded repr for error messages: a hostile value must not make a huge header."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _decode_rejection(value: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejection(ErrorClass.INVALID_ENCODING, f"value is not UTF-8: {uexc.reason} at byte {uexc.start}")
    if "depth limit" in str(exc):
        # Not MAX_NESTING_DEPTH: that is one event's limit, and a record nesting 300 levels is
        # judged member by member, so naming it here sent producers to the wrong limit.
        return Rejection(
            ErrorClass.NESTING_TOO_DEEP, f"the record nests more than {MAX_RECORD_NESTING_DEPTH} levels deep"
        )
    if "infinity" in str(exc):  # valid JSON, but a number no double (nor any meter) can hold
        return Rejection(ErrorClass.VALUE_OUT_OF_RANGE, f"the record holds a number out of any range: {exc}")
    return Rejection(ErrorClass.INVALID_JSON, f"value is not JSON: {exc}")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _binary_mode_attributes(headers: list[tuple[str, bytes | None]] | None) -> dict[str, Any] | None:
    """CloudEvents Kafka binary mode: attributes in ``ce_*`` headers, ``data`` in the value.

    An attribute that is not UTF-8 rejects the record rather than being patched with
    replacement characters: two customers' ids must never merge into one.
    """
    if not headers:
        return None
    attrs: dict[str, Any] = {}
    for name, value in headers:
        if not name.startswith("ce_"):
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # the transport decoded a non-UTF-8 name with escapes
            shown = name.encode("utf-8", "backslashreplace").decode()
            raise Rejection(ErrorClass.INVALID_ENCODING, f"header name {shown!r} is not UTF-8") from None
        if value is None:
            attrs[name[3:]] = None
            continue
        try:
            attrs[name[3:]] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise Rejection(ErrorClass.INVALID_ENCODING, f"header {name} is not UTF-8") from None
    if "specversion" not in attrs:
        return None
    return attrs


def member_bytes(record_value: bytes, parsed: ParsedRecord, member: RecordMember) -> bytes:
    """What a dead letter carries: the record's own bytes, or the member re-encoded for a batch.

    A member too deeply nested to re-encode carries nothing; its ``source.offset`` and
    ``source.index`` headers still point at it in the original record.
    """
    return reencoded_member(member.raw) if parsed.batch else record_value


def reencoded_member(raw: Any) -> bytes:
    """A batch member as its own JSON, or nothing if it nests too deeply to re-encode."""
    try:
        return orjson.dumps(raw)
    except TypeError:
        return b""
