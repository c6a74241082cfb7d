"""Usage posted over HTTP: judged by the Kafka path's own code, then cut into records.

``POST /v1/events`` must reject exactly what the pipeline would dead-letter for the event
itself, so a member is checked by :func:`bastionary.ingest.cloudevents.parse_record` and
:meth:`MeterIndex.readings`, the two steps the flush planner runs on every record, with
the request's arrival standing in for the record's broker timestamp. What passes is
published as records keyed by customer, batch records in the request's order, each within
the record size limit and what the producer takes (a lone member that its batch's brackets
would take past that goes as itself). A member is re-encoded from an exact decode (every
number's digits as sent), so the stored data, and the payload digest the dedupe compares,
are the same as if the producer had published the event to Kafka itself; a retried request
is therefore a repeat, and counts once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from bastionary.ingest.cloudevents import ParsedRecord, RecordLimits, exact_number, member_texts, parse_record
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.readings import MeterIndex

_EXACT = msgspec.json.Decoder(float_hook=lambda text: msgspec.Raw(text.encode()))
_ENCODE = msgspec.json.Encoder()
_EXACT_NUMBERS = msgspec.json.Decoder(float_hook=exact_number)  # as the record parser's exact decode
# What Faust's producer takes in one request at its default producer_max_request_size (which the
# worker keeps), less room for the key (a subject of 256 characters) and the record's framing.
_PRODUCER_VALUE_BYTES = 1_000_000 - 2_048


@dataclass(frozen=True)
class RejectedMember:
    index: int
    id: str | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "code": self.code, "message": self.message}


@dataclass
class PostedEvents:
    """What to publish (``records``: customer key and value), which members go, which do not."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # event ids, in request order
    rejected: list[RejectedMember] = field(default_factory=list)
    refused: Rejection | None = None  # the whole request is unusable


def judge_posted(
    body: bytes,
    batch: bool | None,
    received_ms: int,
    limits: RecordLimits,
    meters: MeterIndex,
    customer: str | None = None,
) -> PostedEvents:
    """``batch``: the content type said a batch (True), one event (False) or either (None).
    ``customer``: the only customer the caller may post for (a customer-limited key)."""
    parsed = parse_record(body, None, received_ms, limits)
    out = PostedEvents()
    if parsed.rejection is not None:
        out.refused = parsed.rejection
        return out
    if batch is not None and batch != parsed.batch:
        expected = "a JSON array of events" if batch else "one JSON object"
        out.refused = Rejection(ErrorClass.NOT_CLOUDEVENT, f"the content type says {expected}")
        return out
    exact = _ExactBody(body, parsed)
    grouped: dict[str, list[bytes]] = {}
    # (subject, source, id): one record, so one partition, where the worker's dedupe would
    # count the first and dead-letter a later member with another payload.
    first_payloads: dict[tuple[str, str, str], bytes] = {}
    for member in parsed.members:
        event = member.event
        raw_id = member.raw.get("id") if isinstance(member.raw, dict) else None
        shown_id = raw_id if isinstance(raw_id, str) else None
        if event is None:
            rejection = member.rejection or Rejection(ErrorClass.NOT_CLOUDEVENT, "not a usage event")
            out.rejected.append(RejectedMember(member.index, shown_id, rejection.code.value, rejection.message))
            continue
        try:
            meters.readings(event, exact.data, member.index)
        except Rejection as rejection:
            out.rejected.append(RejectedMember(member.index, event.id, rejection.code.value, rejection.message))
            continue
        if customer is not None and event.subject != customer:
            out.rejected.append(
                RejectedMember(member.index, event.id, "other_customer", f"the API key may post for {customer!r} only")
            )
            continue
        first_payload = first_payloads.setdefault((event.subject, event.source, event.id), member.payload_hash)
        if first_payload != member.payload_hash:
            out.rejected.append(
                RejectedMember(
                    member.index,
                    event.id,
                    ErrorClass.DUPLICATE_CONFLICT.value,
                    f"(source, id) = ({event.source}, {event.id}) is in this request already with another payload;"
                    " the first one counts",
                )
            )
            continue
        grouped.setdefault(event.subject, []).append(_ENCODE.encode(exact.member(member.index)))
        out.accepted.append(event.id)
    out.records = [
        (subject.encode(), value) for subject, members in grouped.items() for value in _record_values(members, limits)
    ]
    return out


class _ExactBody:
    """The posted body's members decoded exactly (every number's digits as sent).

    orjson, which judged the body, decodes 1,024 levels, msgspec about 1,000 (the interpreter's
    recursion limit, less the caller's depth): a member nested between the two is rejected, but
    decoding the batch whole for its siblings raised RecursionError, and the request was
    answered 503, retried for ever. Then the members' bytes are cut apart and decoded alone.
    """

    def __init__(self, body: bytes, parsed: ParsedRecord):
        self._body = body
        self._parsed = parsed
        self._whole: Any = None
        self._texts: list[bytes] | None = None  # set once the whole body's decode recursed

    def data(self, index: int) -> Any:
        """Member ``index``'s ``data``, as :meth:`ParsedRecord.exact_data` (for the meters)."""
        if self._texts is None:
            try:
                return self._parsed.exact_data(index)
            except RecursionError:
                self._texts = member_texts(self._body)
        return _EXACT_NUMBERS.decode(self._texts[index]).get("data", {})

    def member(self, index: int) -> Any:
        """Member ``index`` (the body itself for one event), its numbers as :class:`msgspec.Raw`."""
        if not self._parsed.batch:
            return _EXACT.decode(self._body)
        if self._texts is None and self._whole is None:
            try:
                self._whole = _EXACT.decode(self._body)
            except RecursionError:
                self._texts = member_texts(self._body)
        if self._texts is not None:
            return _EXACT.decode(self._texts[index])
        return self._whole[index]


def _record_values(members: list[bytes], limits: RecordLimits) -> list[bytes]:
    """One customer's members as batch records, in order, each within the record size limit
    and what the producer takes: the body was within the limit, so its accepted events must
    not come back as ``record_too_large`` nor be refused by the producer (a 413 for a request
    the contract allows). Records of one customer share a partition, so the order holds."""
    largest = min(limits.max_record_bytes, _PRODUCER_VALUE_BYTES)
    values: list[bytes] = []
    chunk: list[bytes] = []
    size = 1  # the brackets, and a comma before each member but the first
    for member in members:
        if chunk and size + len(member) + 1 > largest:
            values.append(_record_value(chunk, largest))
            chunk, size = [], 1
        chunk.append(member)
        size += len(member) + 1
    values.append(_record_value(chunk, largest))
    return values


def _record_value(members: list[bytes], largest: int) -> bytes:
    """The members as a batch record, or a lone member as itself where the batch's two
    brackets would take it past ``largest``."""
    value = b"[" + b",".join(members) + b"]"
    if len(members) == 1 and len(value) > largest:
        return members[0]
    return value
