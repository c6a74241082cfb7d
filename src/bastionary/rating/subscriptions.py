"""A subscription's history, from its events: the plans it was on, and when it ended.

Events are applied in order (``effective_at``, then cancelations last, then event id), so
the same events always give the same subscription, whoever reads them; the created event
first, though: a change or a cancellation effective before the start (received before the
subscription began) applies to it, at its start, rather than being dropped for want of it.

A subscription bills in one currency on one grid of periods: a plan change keeps the
currency and the billing interval of the plan it was created on (:func:`plan_change_problem`).
It belongs to the customer of its created event: a change or a cancellation naming another
customer is not its (:func:`subscription_owner`; else a key scoped to one customer could change
another's subscription by naming itself in the body). The intake refuses such events. One
it could not check, because it came before its created event was stored, is ignored here.
One stored before those rules (received after its created event) is applied, as it was when
its periods were invoiced: ignoring it now would bill those periods again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple, overload

import structlog

from bastionary.rating.invoice import Segment, Subscription
from bastionary.rating.periods import Interval
from bastionary.rating.plans import Plan

log = structlog.get_logger(__name__)


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
    for event in sorted(events, key=lambda e: e.kind != "created"):  # stable: the rest keep their order
        effective_at = utc(event.effective_at)
        if event.kind == "created" and not segments and event.plan in plans:
            customer = event.customer_id
            start = utc(event.start) or effective_at
            anchor = minute(utc(event.billing_anchor) or start)
            segments.append(Segment(plans[event.plan], minute(start)))
            received, backfill = utc(event.received_at), bool(event.backfill)
        elif (
            event.kind in ("changed", "canceled")
            and segments
            and event.customer_id != customer
            and _unchecked(event, received)
        ):
            _tell_ignored(subscription_id, event, "it names another customer than the subscription's created event")
        elif event.kind == "changed" and segments and event.plan in plans and canceled_at is None:
            problem = plan_change_problem(segments[0].plan, plans[event.plan])
            if problem is not None and _unchecked(event, received):
                _tell_ignored(subscription_id, event, problem)
                continue
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


def plan_change_problem(current: Plan, new: Plan) -> str | None:
    """Why a subscription on ``current`` may not change to ``new``, or None. Summing an
    invoice's lines needs one currency, and the periods are counted from the anchor by one
    interval, so both must stay (intervals compare by length: ``P1Y`` is ``P12M``)."""
    if new.currency == current.currency and Interval.parse(new.billing_interval) == Interval.parse(
        current.billing_interval
    ):
        return None
    return (
        f"plan {new.key!r} bills in {new.currency} every {new.billing_interval}; the subscription bills in"
        f" {current.currency} every {current.billing_interval} (plan {current.key!r}), and a plan change keeps"
        " the currency and the billing interval: to move to that plan, cancel the subscription and create a new one"
    )


def _unchecked(event: SubscriptionEvent, created_received: datetime | None) -> bool:
    """Whether ``event`` came before its created event: the intake had nothing to check it
    against. One received after it was checked, or was stored before the intake checked."""
    received = utc(event.received_at)
    return received is not None and created_received is not None and received < created_received


def subscription_owner(stored: Iterable[SubscriptionEvent]) -> str | None:
    """The customer a subscription belongs to, given its ``stored`` events (in the order
    :func:`build_subscription` applies them): its first created event's. None before one is
    stored: then any customer's event is taken, and ignored later if the created event names
    another."""
    return next((event.customer_id for event in stored if event.kind == "created"), None)


def plan_change_refusal(new: Plan, stored: Iterable[SubscriptionEvent], plans: Mapping[str, Plan]) -> str | None:
    """Why a change to ``new`` is refused, given the subscription's ``stored`` events (in the
    order :func:`build_subscription` applies them), or None.

    Compared with the plan of the created event that :func:`build_subscription` starts from.
    Every change it applies has that plan's currency and interval, so it bills as the plan in
    force at any moment would, whatever the order the changes arrive in or take effect. A
    change may arrive before its created event: it is then compared with every stored
    change's plan, and with none stored it is accepted (should the created event disagree,
    :func:`build_subscription` ignores the change, with a warning).
    """
    planned = [event for event in stored if event.kind in ("created", "changed") and event.plan in plans]
    created = [event for event in planned if event.kind == "created"][:1]
    for event in created or planned:
        problem = plan_change_problem(plans[event.plan], new)
        if problem is not None:
            return problem
    return None


# Said once per process: the rater and the entitlements rebuild subscriptions every few seconds.
# Such an event was stored before the intake refused them, or arrived before a created event
# it disagrees with.
_told_ignored: set[tuple[str, str, str, str, datetime]] = set()


def _tell_ignored(subscription_id: str, event: SubscriptionEvent, problem: str) -> None:
    key = (subscription_id, event.kind, event.customer_id, event.plan, utc(event.effective_at))
    if key in _told_ignored:
        return
    _told_ignored.add(key)
    log.warning(
        "subscription event ignored",
        subscription_id=subscription_id,
        kind=event.kind,
        customer_id=event.customer_id,
        plan=event.plan,
        effective_at=key[4].isoformat(),
        problem=problem,
    )


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
