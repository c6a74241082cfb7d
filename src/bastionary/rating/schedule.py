"""When a subscription's invoices fall due: each period's at its cutoff, an advance invoice
at each plan segment's start, a progressive one when usage reaches a threshold, and an ended
subscription's final adjustment. Pure functions of the subscription and a moment."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.rating.invoice import Period, Subscription, invoice_id

FINAL_ADJUSTMENT = "final_adjustment"  # an ended subscription's invoice for its late usage
PROGRESSIVE = "progressive"  # an open period's usage billed early, at a usage threshold


def unbilled_before(sub: Subscription, backfill: bool) -> datetime | None:
    """Backfill is deliberate: periods that ended before the subscription was received (it
    started more than a period in the past) are not rated, unless the operator said so
    (``backfill``, the setting, or ``backfill: true`` on the created event). Returns the moment
    such periods end by, or None when every period is rated."""
    if backfill or sub.backfill or sub.received_at is None:
        return None
    return sub.received_at


def billable(period: Period, before: datetime | None) -> bool:
    return before is None or period.end > before


def cutoff_for(period_end: datetime, grace: timedelta) -> datetime:
    """``period_end + grace``, rounded up to a minute: usage is read by whole ingest minutes.
    (The settings take the grace in whole minutes; a period end inside a minute, from a
    cancellation or a plan change, is what gets rounded.)"""
    moment = period_end + grace
    epoch = moment.timestamp()
    return datetime.fromtimestamp(math.ceil(epoch / 60) * 60, tz=UTC)


def first_index(sub: Subscription) -> int:
    """The index of the subscription's first period: 0, the anchor's, unless the subscription
    starts before its anchor; then the (negative) index of the period before the anchor that
    holds its start. Periods count back from the anchor, so the stub from the start to the
    anchor is billed, prorated from the start as a first period that starts late is."""
    start = sub.segments[0].start
    if start >= sub.anchor:
        return 0
    return sub.first_plan.interval.period_containing(sub.anchor, start)[0]


def nth_period(sub: Subscription, n: int) -> Period | None:
    """Period ``n`` of the subscription (see :func:`first_index`), cut at its cancellation (it
    may then be empty); None once periods start at or after the cancellation."""
    interval = sub.first_plan.interval
    start, full_end = interval.nth_boundary(sub.anchor, n), interval.nth_boundary(sub.anchor, n + 1)
    if sub.canceled_at is not None and start >= sub.canceled_at:
        return None
    end = min(full_end, sub.canceled_at) if sub.canceled_at else full_end
    return Period(n, start, end, full_end)


def closed_periods(sub: Subscription, now: datetime, grace: timedelta) -> list[tuple[Period, datetime]]:
    """Every period whose cutoff has passed, with its cutoff, in order."""
    out = []
    n = first_index(sub)
    while (period := nth_period(sub, n)) is not None:
        cutoff = cutoff_for(period.end, grace)
        if cutoff > now:
            break
        if period.end > period.start:
            out.append((period, cutoff))
        n += 1
    return out


def final_adjustment(
    sub: Subscription, now: datetime, grace: timedelta, billed_until: datetime | None = None
) -> tuple[list[Period], datetime] | None:
    """An ended subscription's last invoice, for usage that landed after its last period's
    cutoff: every period of the subscription, and the final cutoff, the last cutoff plus the
    grace again. None for a subscription that has not ended, or before the final cutoff.
    Usage ingested after the final cutoff is never billed.

    ``billed_until``: how far invoices rated before a backdated cancellation was known billed
    the subscription as running (:func:`last_cutoff`)."""
    if sub.canceled_at is None:
        return None
    periods, n = [], first_index(sub)
    while (period := nth_period(sub, n)) is not None:
        if period.end > period.start:
            periods.append(period)
        n += 1
    if not periods:
        # Canceled at or before its first period's start: nothing was served, but a fee billed
        # in advance (at the start, before the cancellation came) is still to be credited back.
        # The invoice is the empty first period's; it adjusts no period.
        interval, first = sub.first_plan.interval, first_index(sub)
        start = interval.nth_boundary(sub.anchor, first)
        periods = [Period(first, start, start, interval.nth_boundary(sub.anchor, first + 1))]
    cutoff = cutoff_for(last_cutoff(periods[-1], grace, billed_until), grace)
    return (periods, cutoff) if cutoff <= now else None


def last_cutoff(last: Period, grace: timedelta, billed_until: datetime | None = None) -> datetime:
    """The cutoff an ended subscription's last period counts from for its final adjustment:
    its end's, or, when invoices rated before a backdated cancellation was known billed it as
    running until ``billed_until`` (past that end), that moment's. Their usage was read as of
    cutoffs up to then: the final adjustment reads every period again as of a cutoff before
    one of those, and would give back usage before the cancellation that they billed on time."""
    return cutoff_for(max(last.end, billed_until or last.end), grace)


def upcoming_period(
    sub: Subscription, now: datetime, grace: timedelta, rated: set[str], unbilled: datetime | None = None
) -> tuple[list[Period], Period, datetime] | None:
    """The subscription's next invoice: its first period not rated yet whose cutoff is still
    ahead, with the periods before it and its cutoff. None once the subscription has ended
    and every period is rated (or due)."""
    first = first_index(sub)
    # Periods before the one holding (now - grace) have all passed their cutoff: skip them.
    n = max(first, sub.first_plan.interval.period_containing(sub.anchor, now - grace)[0])
    while (period := nth_period(sub, n)) is not None:
        cutoff = cutoff_for(period.end, grace)
        if period.end > period.start and cutoff > now and invoice_id(sub.subscription_id, period.start) not in rated:
            earlier = [
                p
                for k in range(first, n)
                if (p := nth_period(sub, k)) is not None and p.end > p.start and billable(p, unbilled)
            ]
            return earlier, period, cutoff
        n += 1
    return None


def advance_due(sub: Subscription, now: datetime) -> list[tuple[Period, datetime]]:
    """The subscription's advance invoices due by ``now``: one at each plan segment's start
    (the subscription's start, each plan change) where the new or the previous plan bills a
    fee in advance, with the period that segment start falls in."""
    out: list[tuple[Period, datetime]] = []
    interval = sub.first_plan.interval
    for k, segment in enumerate(sub.segments):
        previous = sub.segments[k - 1].plan.advance_prices if k else []
        if not (segment.plan.advance_prices or previous):
            continue
        start = segment.start
        if start > now or (sub.canceled_at is not None and start >= sub.canceled_at):
            break
        period = nth_period(sub, interval.period_containing(sub.anchor, start)[0])
        if period is not None and period.end > start and all(start != s for _, s in out):
            out.append((period, start))
    return out


def open_period(sub: Subscription, moment: datetime) -> Period | None:
    """The subscription's period holding ``moment``, if any (None before its first period or
    after it ended)."""
    n = sub.first_plan.interval.period_containing(sub.anchor, moment)[0]
    if n < first_index(sub):
        return None
    period = nth_period(sub, n)
    return period if period is not None and period.start <= moment < period.end else None


def progressive_key(threshold: Decimal) -> str:
    """The invoice id's kind part for a progressive invoice: one per threshold and period."""
    return f"{PROGRESSIVE}:{threshold.normalize():f}"


def progressive_id(sub: Subscription, period: Period, threshold: Decimal) -> str:
    return invoice_id(sub.subscription_id, period.start, progressive_key(threshold))
