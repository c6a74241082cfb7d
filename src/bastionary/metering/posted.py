"""Usage posted over HTTP: judged by the Kafka path's own code, then cut into records.

``POST /v1/events`` must reject exactly what the pipeline would dead-letter for the event
itself, so a member is checked by :func:`bastionary.ingest.cloudevents.parse_record` and
:meth:`MeterIndex.readings`, the two steps the flush planner runs on every record, with
the request's arrival standing in for the record's broker timestamp. What passes is
published as records keyed by customer, one batch record per customer, in the request's
order (a lone member that its batch's brackets would take past the record size limit goes
as itself). A member is re-encoded from an exact decode (every number's digits as sent), so the
stored data, and the payload digest the dedupe compares, are the same as if the producer
had published the event to Kafka itself; a retried request is therefore a repeat, and
counts once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from bastionary.ingest.cloudevents import RecordLimits, parse_record
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.readings import MeterIndex

_EXACT = msgspec.json.Decoder(float_hook=lambda text: msgspec.Raw(text.encode()))
_ENCODE = msgspec.json.Encoder()


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
    exact: Any = None
    grouped: dict[str, list[bytes]] = {}
    for member in parsed.members:
        event = member.event
        raw_id = member.raw.get("id") if isinstance(member.raw, dict) else None
        shown_id = raw_id if isinstance(raw_id, str) else None
        if event is None:
            rejection = member.rejection or Rejection(ErrorClass.NOT_CLOUDEVENT, "not a usage event")
            out.rejected.append(RejectedMember(member.index, shown_id, rejection.code.value, rejection.message))
            continue
        try:
            meters.readings(event, parsed.exact_data, member.index)
        except Rejection as rejection:
            out.rejected.append(RejectedMember(member.index, event.id, rejection.code.value, rejection.message))
            continue
        if customer is not None and event.subject != customer:
            out.rejected.append(
                RejectedMember(member.index, event.id, "other_customer", f"the API key may post for {customer!r} only")
            )
            continue
        if exact is None:
            exact = _EXACT.decode(body)
        grouped.setdefault(event.subject, []).append(_ENCODE.encode(exact[member.index] if parsed.batch else exact))
        out.accepted.append(event.id)
    out.records = [(subject.encode(), _record_value(members, limits)) for subject, members in grouped.items()]
    return out


def _record_value(members: list[bytes], limits: RecordLimits) -> bytes:
    """One customer's members as a batch record, or a lone member as itself where the batch's
    two brackets would take it past the record size limit: the body was within it, and an
    accepted event must not come back as ``record_too_large``."""
    value = b"[" + b",".join(members) + b"]"
    if len(members) == 1 and len(value) > limits.max_record_bytes:
        return members[0]
    return value
