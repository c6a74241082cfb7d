"""A subscription's history, from its events: the plans it was on, and when it ended.

Events are applied in order (``effective_at``, then cancelations last, then event id), so
the same events always give the same subscription, whoever reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple, overload

from bastionary.rating.invoice import Segment, Subscription
from bastionary.rating.plans import Plan


class SubscriptionEvent(NamedTuple):
    """One ``bastionary.subscription.*.v1`` event, as stored (a row of ``subscriptions``)."""

    subscription_id: str
    customer_id: str
    kind: str  # created | changed | canceled
    plan: str
    start: datetime | None
    billing_anchor: datetime | None
    effective_at: datetime
    received_at: datetime | None = None
    backfill: int = 0


def build_subscription(
    subscription_id: str, events: Iterable[SubscriptionEvent], plans: Mapping[str, Plan]
) -> Subscription | None:
    """None until a created event for a known plan has been seen."""
    segments: list[Segment] = []
    customer, anchor, canceled_at = "", None, None
    received, backfill = None, False
    for event in events:
        effective_at = utc(event.effective_at)
        if event.kind == "created" and not segments and event.plan in plans:
            customer = event.customer_id
            start = utc(event.start) or effective_at
            anchor = minute(utc(event.billing_anchor) or start)
            segments.append(Segment(plans[event.plan], minute(start)))
            received, backfill = utc(event.received_at), bool(event.backfill)
        elif event.kind == "changed" and segments and event.plan in plans and canceled_at is None:
            at = minute(effective_at)
            last = segments[-1]
            if at <= last.start:
                segments[-1] = Segment(plans[event.plan], last.start)
            else:
                segments[-1] = Segment(last.plan, last.start, at)
                segments.append(Segment(plans[event.plan], at))
        elif event.kind == "canceled" and segments and canceled_at is None:
            canceled_at = minute(effective_at)
            last = segments[-1]
            segments[-1] = Segment(last.plan, last.start, max(canceled_at, last.start))
    if not segments or anchor is None:
        return None
    return Subscription(subscription_id, customer, anchor, tuple(segments), canceled_at, received, backfill)


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: datetime | None) -> datetime | None: ...


def utc(value: datetime | None) -> datetime | None:
    """ClickHouse gives naive UTC datetimes back; make every moment aware."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def minute(value: datetime) -> datetime:
    """Periods are cut at minute boundaries, the resolution of the usage rollups."""
    return value.replace(second=0, microsecond=0)
