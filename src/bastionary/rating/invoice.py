"""One invoice for one closed period of one subscription: a pure function of its inputs.

Usage is read *as of a cutoff* (``period_end + grace``, on the broker's ingest clock), so
the same period rated twice, by two raters or after a crash, gives the same invoice. Usage
that arrives after the cutoff is billed on the next invoice as an adjustment: the price of
the period's usage as of the new cutoff minus its price as of the old one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_DOWN, Context, Decimal
from typing import Any, NamedTuple

from bastionary.credits.ledger import Allocation, Grant, allocate
from bastionary.money import format_money, round_money
from bastionary.rating.plans import FlatPrice, MeteredPrice, PerUnitPrice, Plan
from bastionary.rating.pricing import Usage, price_usage
from bastionary.rating.service_windows import (
    ServiceWindow,
    fee_unchanged,
    net_windows,
    owed_windows,
    same_usage,
    spans_moved,
)
from bastionary.rating.tax import TaxRate, added_tax, applied_rates, grouped_tax_lines
from bastionary.settings import parse_iso_duration

INVOICE_NAMESPACE = uuid.UUID("5b0b7a53-3b8e-4c4e-9a55-bb5e1e7f0c01")
ZERO = Decimal(0)
ADVANCE = "advance"
# ``invoice_lines.quantity`` is Decimal(38, 9), and the ClickHouse client truncates to it (a
# prorated share has 28 digits). What was billed is read back at that scale, so what is owed
# is compared at it too; otherwise every such share differs from its stored self by less than
# a billionth, and an adjustment of that quantity and no amount is published for it.
STORED_QUANTITY = Decimal("0.000000001")
# Wide enough for any quantity the column holds (38 digits): the default context's 28 would
# refuse a sum of 10**19 or more at 9 decimals, and stop every customer's rating run.
_STORED_SCALE = Context(prec=60)


def stored_quantity(quantity: Decimal) -> Decimal:
    """A line's quantity as ``invoice_lines`` keeps it."""
    return quantity.quantize(STORED_QUANTITY, rounding=ROUND_DOWN, context=_STORED_SCALE)


@dataclass(frozen=True)
class Segment:
    """The subscription on one plan, from ``start`` until ``end`` (None: still on it)."""

    plan: Plan
    start: datetime
    end: datetime | None = None


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    customer_id: str
    anchor: datetime
    segments: tuple[Segment, ...]
    canceled_at: datetime | None = None
    received_at: datetime | None = None  # when its created event was received
    backfill: bool = False  # its created event asks for the periods before that to be rated

    @property
    def first_plan(self) -> Plan:
        return self.segments[0].plan

    def plan_at(self, moment: datetime) -> Plan:
        """The plan in force at ``moment``; the first one before the subscription's start (a
        first period that starts late is its first plan's: its minimum, its currency), the
        last one after its end."""
        if moment < self.segments[0].start:
            return self.segments[0].plan
        for segment in self.segments:
            if segment.start <= moment and (segment.end is None or moment < segment.end):
                return segment.plan
        return self.segments[-1].plan

    def active_at(self, moment: datetime) -> bool:
        return self.segments[0].start <= moment and (self.canceled_at is None or moment < self.canceled_at)


@dataclass(frozen=True)
class Period:
    index: int
    start: datetime
    end: datetime  # cut at cancellation
    full_end: datetime  # the boundary the period would have had: the proration base


# usage(price, customer_id, start, end, as_of) -> Usage
UsageLookup = Callable[[MeteredPrice, str, datetime, datetime, datetime], Usage]


@dataclass
class Line:
    price_key: str
    meter: str | None
    description: str
    quantity: Decimal
    amount: Decimal
    tiers: list[dict[str, Any]] = field(default_factory=list)
    line_key: str = ""  # plan:price, stable across invoices
    period_start: datetime | None = None  # set on adjustment lines: the period adjusted
    unit_price: Decimal | None = None  # per-unit and flat prices: the price of one unit / of the fee
    percentage: dict[str, Any] | None = None  # percentage prices: rate, value, events, fixed/min/max amount
    # A fee billed in advance: ``period_start`` (always set) .. ``service_end`` is the period it pays for.
    timing: str = "arrears"
    service_end: datetime | None = None
    # Deducts what earlier invoices (progressive ones) billed of this period's usage.
    already_billed: bool = False
    # A percentage price's events (its fixed amount is charged per event, which its quantity
    # does not count), or the change in them; None on other lines, or when not known.
    events: int | None = None
    # The spans of the period it bills (service_windows.py): on a prorated fee's or a usage
    # line, its segment's; on an adjustment, the spans it replaces, negated, and those it
    # bills instead. Empty on other lines, and where what was billed is not known span by span.
    windows: tuple[ServiceWindow, ...] = ()

    def as_dict(self, currency: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "price_key": self.price_key,
            "meter": self.meter,
            "description": self.description,
            "quantity": _text(self.quantity),
            "amount": format_money(self.amount, currency),
            "tiers": self.tiers,
        }
        if self.timing == ADVANCE and self.period_start is not None and self.service_end is not None:
            out["billing_timing"] = ADVANCE
            out["service_period_start"] = self.period_start.isoformat()
            out["service_period_end"] = self.service_end.isoformat()
        elif self.period_start is not None:
            out["adjusts_period_start"] = self.period_start.isoformat()
        if self.already_billed:
            out["already_billed"] = True
        if self.unit_price is not None:
            out["unit_price"] = _text(self.unit_price)
        if self.percentage is not None:
            out["percentage"] = self.percentage
        return out


def invoice_id(subscription_id: str, period_start: datetime, kind: str = "period") -> str:
    return str(uuid.uuid5(INVOICE_NAMESPACE, f"{subscription_id}|{kind}|{period_start.isoformat()}"))


def overlap(segment: Segment, start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    lo = max(segment.start, start)
    hi = min(segment.end or end, end)
    return (lo, hi) if lo < hi else None


def share(plan: Plan, start: datetime, end: datetime, period: Period) -> Decimal:
    """The share of ``period`` that [start, end) is: the proration factor of a flat fee or a
    minimum commitment. 1 for a plan with ``prorate: false``."""
    if not plan.prorate:
        return Decimal(1)
    full = (period.full_end - period.start).total_seconds()
    return Decimal(str((end - start).total_seconds())) / Decimal(str(full))


def owes_fees_again(sub: Subscription, segment: Segment, period: Period) -> bool:
    """False for a segment whose plan has ``prorate: false`` and held an earlier segment of the
    period (A -> B -> A): such a plan owes its flat fees whole once per period, however many
    segments of it the period holds, so its later segments owe none (they owed the fee again)."""
    if segment.plan.prorate:
        return True
    for earlier in sub.segments:
        if earlier is segment:
            return True
        if earlier.plan.key == segment.plan.key and overlap(earlier, period.start, period.end) is not None:
            return False
    return True


def _flat_line(price: FlatPrice, plan: Plan, window: tuple[datetime, datetime], period: Period, suffix: str) -> Line:
    """The fee's share of ``period`` for ``window``, a span of it on ``plan``."""
    fraction = share(plan, *window, period)
    text = price.description or price.key
    label = f"{text}{suffix}" + (f", prorated {fraction:.4f}" if fraction != 1 else "")
    amount = price.amount * fraction
    line = Line(price.key, None, label, fraction, amount, line_key=f"{plan.key}:{price.key}")
    # A fee that is not prorated owes the same for any span: its spans tell nothing.
    windows = (ServiceWindow(*window, fraction, amount),) if plan.prorate else ()
    return replace(line, unit_price=price.amount, windows=windows)


def owed_as_billed(
    quantity: Decimal,
    amount: Decimal,
    fee: Line,
    billed_before: Billing | None,
    currency: str,
    windows: Sequence[ServiceWindow] = (),
) -> tuple[Decimal, tuple[ServiceWindow, ...]]:
    """What a flat fee owes for a period already billed for it, when its share moved since (a
    cancellation or a plan change received later): ``quantity`` and ``amount`` are its share now
    and that share at today's fee (``fee``, the fee's first line), ``windows`` its spans now at
    today's fee (rounded, as stored), ``billed_before`` what invoices billed. Also returns the
    windows of the line billing the difference (``Line.windows``).

    A fee changed in the catalog since does not reach back: a span given back is credited at
    what was paid for it, and a span added is charged at today's fee (service_windows.py). If
    today's fee gives what every span still billed was paid, it did not change, and today's
    amount is kept as it is. Where what was billed is not known span by span (a fee that is
    not prorated, lines stored before 2026-12-06), the share given back is credited at the
    amount billed scaled by the share kept, which is the average of what its parts were paid.
    Either way, a part of a rounded amount may be a cent off the amount the fee then would
    give: never more. A usage line (``fee.meter``) owes ``amount`` as it is (usage that moved
    is priced whole at today's price), and its line replaces the spans billed with ``windows``."""
    if billed_before is None:
        return amount, tuple(windows)
    billed_windows = billed_before.windows
    if fee.meter is not None:  # usage: priced whole at today's price, its spans as they are now
        known = billed_windows is not None and (windows or not quantity)
        return amount, ((*(w.negated() for w in billed_windows or ()), *windows) if known else ())
    if billed_windows is not None and (windows or not quantity):
        replaced = tuple(window.negated() for window in billed_windows)
        if fee.unit_price is None or fee_unchanged(fee.unit_price, billed_windows, currency):
            return amount, (*replaced, *windows)
        owed = owed_windows(windows, fee.unit_price, billed_windows, currency)
        return sum((window.amount for window in owed), ZERO), (*replaced, *owed)
    if fee.unit_price is None:
        return amount, ()
    billed_share, billed_amount = billed_before.quantity, billed_before.amount
    if billed_share <= 0 or round_money(fee.unit_price * billed_share, currency) == billed_amount:
        return amount, ()
    if quantity <= billed_share:
        return round_money(billed_amount * quantity / billed_share, currency), ()
    return billed_amount + round_money(fee.unit_price * (quantity - billed_share), currency), ()


def period_lines(sub: Subscription, period: Period, as_of: datetime, usage: UsageLookup) -> list[Line]:
    """Recurring fees billed in arrears (prorated by time) and usage charges, per plan segment
    in the period. Fees billed in advance are :func:`advance_lines`."""
    lines: list[Line] = []
    several = sum(1 for s in sub.segments if overlap(s, period.start, period.end)) > 1
    for segment in sub.segments:
        window = overlap(segment, period.start, period.end)
        if window is None:
            continue
        lo, hi = window
        plan = segment.plan
        suffix = f" ({plan.key})" if several else ""
        for price in plan.prices:
            if isinstance(price, FlatPrice):
                if price.billing_timing != ADVANCE and owes_fees_again(sub, segment, period):
                    lines.append(_flat_line(price, plan, window, period, suffix))
                continue
            used = usage(price, sub.customer_id, lo, hi, as_of)
            priced = price_usage(price, used)
            label = f"{price.description or price.key}{suffix}"
            unit = price.unit_amount if isinstance(price, PerUnitPrice) else None
            lines.append(
                Line(
                    price.key,
                    price.meter,
                    label,
                    used.quantity,
                    priced.amount,
                    priced.tiers,
                    f"{plan.key}:{price.key}",
                    unit_price=unit,
                    percentage=priced.percentage,
                    events=used.events if priced.percentage is not None else None,
                    windows=(ServiceWindow(lo, hi, used.quantity, priced.amount),),
                )
            )
    return lines


MINIMUM_KEY = "minimum_commitment"  # the true-up's line key: no colon, so never a plan:price key
LEGACY_MINIMUM_KEY = ""  # the key true-up lines were stored under before they had their own


def committed_minimum(
    plan: Plan, currency: str, period: Period, started: datetime | None = None
) -> tuple[Decimal, Decimal] | None:
    """The share of the period the subscription ran, and the minimum it commits to: the
    plan's minimum prorated by that share (a first period that starts after its boundary, and
    one cut by a cancellation, commit to their share only, as their flat fees are prorated),
    rounded to the currency's minor unit. None for a plan without a minimum.
    ``started``: when the subscription began."""
    if plan.minimum_commitment is None:
        return None
    ran_from = period.start if started is None else max(period.start, started)
    fraction = share(plan, ran_from, max(period.end, ran_from), period)
    return fraction, round_money(plan.minimum_commitment * fraction, currency)


def _true_up_label(fraction: Decimal) -> str:
    return "Minimum commitment true-up" + (f", prorated {fraction:.4f}" if fraction != 1 else "")


def minimum_true_up(
    plan: Plan,
    lines: list[Line],
    currency: str,
    period: Period,
    in_advance: Decimal = ZERO,
    started: datetime | None = None,
) -> Line | None:
    """A line topping the period's charges up to the plan's minimum commitment
    (:func:`committed_minimum`). ``in_advance``: what the period's fees billed in advance come
    to, which count as charged. ``started``: when the subscription began."""
    committed = committed_minimum(plan, currency, period, started)
    if committed is None:
        return None
    fraction, minimum = committed
    charged = sum((round_money(line.amount, currency) for line in lines), in_advance)
    if charged >= minimum:
        return None
    return Line("minimum_commitment", None, _true_up_label(fraction), fraction, minimum - charged, line_key=MINIMUM_KEY)


class Billing(NamedTuple):
    """What invoices billed of one (period, line key), summed as ``invoice_lines`` keeps it."""

    quantity: Decimal
    amount: Decimal
    # A percentage price's events; None if any line of the key has no count (another kind of
    # price, or a line stored before invoice_lines.events existed).
    events: int | None = None
    # The spans still billed (service_windows.py); None if a line of the key that bills
    # something has none (a true-up, a fee that is not prorated, a line stored before
    # invoice_lines.windows existed).
    windows: tuple[ServiceWindow, ...] | None = None


NOTHING_BILLED = Billing(ZERO, ZERO, 0, ())
Billed = dict[tuple[datetime, str], Billing]  # (period start, line key) -> what was billed


def added_events(before: int | None, more: int | None) -> int | None:
    return None if before is None or more is None else before + more


def stored_windows(windows: Iterable[ServiceWindow], currency: str) -> tuple[ServiceWindow, ...]:
    """Windows as ``invoice_lines.windows`` keeps them: shares to 9 decimals, amounts rounded."""
    return tuple(
        ServiceWindow(w.start, w.end, stored_quantity(w.quantity), round_money(w.amount, currency)) for w in windows
    )


def added_windows(
    before: tuple[ServiceWindow, ...] | None, line: Line, currency: str
) -> tuple[ServiceWindow, ...] | None:
    """The spans a key still bills once ``line`` is added to it (unknown stays unknown)."""
    if before is None:
        return None
    if line.windows:
        return net_windows((*before, *stored_windows(line.windows, currency)))
    if stored_quantity(line.quantity) or round_money(line.amount, currency):
        return None  # it bills something, not span by span
    return before


def combined(before: Billing, more: Billing) -> Billing:
    """What a key billed over two sets of invoices (stored, and rated in this batch)."""
    windows = None if before.windows is None or more.windows is None else net_windows((*before.windows, *more.windows))
    return Billing(
        before.quantity + more.quantity,
        before.amount + more.amount,
        added_events(before.events, more.events),
        windows,
    )


def add_billed(billed: Billed, lines: list[Line], period_start: datetime, currency: str) -> None:
    """Add one invoice's lines to ``billed`` as ``invoice_lines`` keeps them: per (period the line
    bills, line key), the quantity and the amount rounded once, as on the invoice."""
    for line in lines:
        key = (line.period_start or period_start, line.line_key)
        before = billed.get(key, NOTHING_BILLED)
        billed[key] = Billing(
            before.quantity + stored_quantity(line.quantity),
            before.amount + round_money(line.amount, currency),
            added_events(before.events, line.events),
            added_windows(before.windows, line, currency),
        )


def _by_period(billed: Billed) -> dict[datetime, dict[str, Billing]]:
    out: dict[datetime, dict[str, Billing]] = {}
    for (start, key), value in billed.items():
        out.setdefault(start, {})[key] = value
    return out


def _priced_plans_over(sub: Subscription, period: Period) -> set[str]:
    """The plans over the period that bill lines (a plan without prices names no line key)."""
    return {s.plan.key for s in sub.segments if s.plan.prices and overlap(s, period.start, period.end)}


# Stored shares are truncated to 9 decimals line by line: a few units of the last one apart
# are the same share. One second of a three-year period is 3e-8 of it.
_SHARE_TOLERANCE = Decimal("1e-8")


def replanned(
    sub: Subscription, periods: list[Period], billed: Billed, invoiced: Collection[datetime] | None = None
) -> set[datetime]:
    """The starts of the periods to rate again whole: their invoices billed them on other
    plans, or other shares or spans of their plans, than the subscription now has over them (a
    plan change, or a cancellation cutting the period, received after the period was invoiced).

    Told by a plan now over the period that none of its lines named, by what is still billed
    under a plan it no longer has, and by the shares of the fees in arrears it billed (a flat
    line's quantity is its share), and their spans where known (A -> B -> A can move both
    plans' spans and keep their shares: :func:`spans_moved`). Each is settled once the period is rated again, and none
    moves when a price changes, or is added, in the catalog. A plan without prices (free, or a
    minimum commitment alone) names no line: it is not looked for, and a period billed on it
    alone holds no line key, so a plan with prices over it now is one no line named.

    ``invoiced``: the starts of the ``periods`` invoiced (None: all, as when rating, where
    earlier periods are rated first); a preview's may not be yet, and one holding no line key
    is then not taken for rated."""
    by_period = _by_period(billed)
    out = set()
    for period in periods:
        held = {key: value for key, value in by_period.get(period.start, {}).items() if ":" in key}
        if not held and invoiced is not None and period.start not in invoiced:
            continue
        plans_now = _priced_plans_over(sub, period)
        named = {key.split(":", 1)[0] for key in held}
        # What still bills: a quantity or an amount (events alone, of a value and amount of 0, bill nothing).
        left_on_others = any(
            value.quantity or value.amount for key, value in held.items() if key.split(":", 1)[0] not in plans_now
        )
        shares: dict[str, Decimal] = {}
        spans: dict[str, list[ServiceWindow]] = {}
        for segment in sub.segments:
            window = overlap(segment, period.start, period.end)
            if window is None or not owes_fees_again(sub, segment, period):
                continue
            for price in segment.plan.prices:
                key = f"{segment.plan.key}:{price.key}"
                if isinstance(price, FlatPrice) and price.billing_timing != ADVANCE and key in held:
                    fraction = stored_quantity(share(segment.plan, *window, period))
                    shares[key] = shares.get(key, ZERO) + fraction
                    spans.setdefault(key, []).append(ServiceWindow(*window, fraction, ZERO))
        moved = any(abs(held[key][0] - fraction) > _SHARE_TOLERANCE for key, fraction in shares.items()) or any(
            spans_moved(spans.get(key, ()), held[key].windows) for key in shares
        )
        if plans_now - named or left_on_others or moved:
            out.add(period.start)
    return out


def usage_keys(sub: Subscription, catalog: Iterable[Plan] = ()) -> dict[str, str]:
    """Every metered price's line key, with its meter: of the subscription's plans and of the
    ``catalog``'s (a plan a backdated change replaced from the start is no segment of it)."""
    plans = [*catalog, *(s.plan for s in sub.segments)]
    return {
        f"{plan.key}:{price.key}": price.meter
        for plan in plans
        for price in plan.prices
        if not isinstance(price, FlatPrice)
    }


def adjustment_lines(
    sub: Subscription,
    earlier: list[Period],
    as_of: datetime,
    usage: UsageLookup,
    billed: Billed,
    currency: str,
    catalog: Iterable[Plan] = (),
    invoiced: Collection[datetime] | None = None,
) -> list[Line]:
    """Late usage of earlier periods: what the period's usage costs now minus what was billed.

    Compared with the quantities and rounded amounts already on invoices (not recomputed),
    so usage that landed late for any reason is billed once, never lost. A line whose quantity
    did not move is left alone, so a price changed in the catalog does not reach back to
    periods without late usage (one with late usage is priced whole at today's price), whether
    or not the period is rated again whole.

    A period billed on other plans than it now has (:func:`replanned`) is rated again whole:
    its fees in arrears too, and what was billed under a line key it no longer has is taken
    back (its fees in advance are :func:`advance_lines`').
    """
    advance = set(advance_keys(sub, catalog))  # taken back by advance_lines, as fees in advance
    moved = replanned(sub, earlier, billed, invoiced)
    lines = []
    for period in earlier:
        again = period.start in moved
        # One plan can appear twice in a period (A -> B -> A): compare per line key, summed.
        # The first line of a key names the adjustment.
        current: dict[str, tuple[Decimal, Decimal, int | None, Line, tuple[ServiceWindow, ...]]] = {}
        segments: dict[str, int] = {}  # lines per key: one plan twice in the period prices each apart
        for line in period_lines(sub, period, as_of, usage):
            if line.meter is None and not again:
                continue
            segments[line.line_key] = segments.get(line.line_key, 0) + 1
            quantity, amount, events, first, windows = current.get(line.line_key, (ZERO, ZERO, 0, line, ()))
            current[line.line_key] = (
                quantity + stored_quantity(line.quantity),
                amount + round_money(line.amount, currency),
                added_events(events, line.events),
                first,
                windows + line.windows,  # as rated: stored_windows only where compared or billed
            )
        if again:
            for start, key in sorted(billed):
                if start == period.start and ":" in key and key not in advance and key not in current:
                    gone = Line(key.split(":", 1)[1], None, key.split(":", 1)[1], ZERO, ZERO, line_key=key)
                    current[key] = (ZERO, ZERO, 0, gone, ())
        why = "plan change" if again else "late usage"
        for key, (quantity, amount, events, line, spans) in current.items():
            old = billed.get((period.start, key), NOTHING_BILLED)
            # A percentage price's fixed amount per event moves with events its quantity does
            # not count: its events are compared too, where both counts are known.
            unmoved = (
                quantity == old.quantity
                and (
                    segments.get(key) == 1
                    or _priced_linearly(line)
                    or same_usage(stored_windows(spans, currency), old.windows)
                )
                and (line.percentage is None or (events is not None and events == old.events))
            )
            if unmoved and line.meter is not None:
                # No usage moved: a price changed in the catalog since does not reach back, in a
                # period rated again whole too (usage is priced per segment, never by its share
                # of the period, so a plan change or a cancellation that leaves a key's usage
                # where it was leaves its amount too). (Usage can move between two segments of
                # one plan, whose tiers count apart, without moving the sum: such a key is
                # compared span by span, or, with lines stored before their spans were kept, by
                # amount unless its price is linear; so is a percentage line stored without its
                # events, which cannot tell.)
                continue
            spans = stored_windows(spans, currency)
            amount, windows = owed_as_billed(quantity, amount, line, billed.get((period.start, key)), currency, spans)
            old_quantity, old_amount = old.quantity, old.amount
            delta = amount - old_amount
            # Events that moved alone (a value and an amount unchanged) are written too, on a line
            # of 0.00, so what is billed keeps their count and a later rate change sees no move;
            # so are spans that moved alone, so what is billed keeps them (else the period is
            # rated again on every run, and a span given back later is credited at the rate of
            # the span it was billed as).
            events_moved = _events_moved(events, old.events)
            if delta != 0 or quantity != old_quantity or events_moved or _spans_moved(line, spans, old.windows):
                lines.append(
                    Line(
                        line.price_key,
                        line.meter,
                        f"Adjustment: {why} for {period.start:%Y-%m-%d %H:%M}–{period.end:%Y-%m-%d %H:%M}"  # noqa: RUF001
                        f" ({line.description})",
                        quantity - old_quantity,
                        delta,
                        line_key=key,
                        period_start=period.start,
                        events=events_moved,
                        windows=windows,
                    )
                )
    return lines


def _spans_moved(line: Line, now: tuple[ServiceWindow, ...], billed: tuple[ServiceWindow, ...] | None) -> bool:
    """Whether the line's key bills other spans now than were billed: a fee's time, a usage
    price's usage per span (None: not known span by span, so not told)."""
    if billed is None:
        return False
    return not same_usage(now, billed) if line.meter is not None else spans_moved(now, billed)


def _priced_linearly(line: Line) -> bool:
    """Whether the line's price costs the same however its usage is split between segments of
    one plan (A -> B -> A): ``per_unit``, and ``percentage`` without a minimum or maximum (a
    bound applies to each segment's line apart). Tiers and packages count each segment apart.

    Only the rounding can tell a split apart: each segment's line is rounded to the minor
    unit, so usage moved between two segments with the sums unchanged may leave the period a
    cent off what rating it again from scratch would give."""
    if line.unit_price is not None:
        return True
    terms = line.percentage
    return terms is not None and terms.get("min_amount") is None and terms.get("max_amount") is None


def _events_moved(now: int | None, billed: int | None) -> int | None:
    return None if now is None or billed is None else now - billed


def true_up_adjustments(
    sub: Subscription,
    earlier: list[Period],
    adjustments: list[Line],
    billed: Billed,
    currency: str,
    cut: Period | None = None,
    invoiced: Collection[datetime] | None = None,
) -> list[Line]:
    """The minimum commitment's true-up of each earlier period this invoice adjusts
    (``adjustments``: its lines for earlier periods), of each earlier period billed on other
    plans or shares than it now has (:func:`replanned`), and of ``cut``,
    the period a cancellation
    ends, if the share of the minimum its true-up was billed for is no longer the period's (a
    cancellation received after the period's invoice); recomputed on the period's final figures,
    less the true-ups already billed for it: late usage lowers the true-up, a correction that
    lowers usage raises it again, so a period is billed in total the greater of its charges and
    its minimum, as if rated once with everything known.

    The charges are what invoices billed for the period (``billed``: its fees, its usage, its
    fees in advance), plus ``adjustments``, in rounded amounts, so repeated rounds of late data
    add up, and a rerun, reading the same stored lines, gives the same lines."""
    adjusted = {line.period_start for line in adjustments if line.line_key != MINIMUM_KEY}
    if cut is not None and _share_moved(sub, cut, billed, currency):
        adjusted.add(cut.start)
    # A period moved to other plans commits to their minimum, whatever else changed.
    adjusted |= replanned(sub, earlier, billed, invoiced)
    charged: dict[datetime, Decimal] = {}
    trued_up: dict[datetime, tuple[Decimal, Decimal]] = {}  # period start -> quantity, amount
    for (start, key), (quantity, amount, *_) in billed.items():
        if start not in adjusted:
            continue
        if key in (MINIMUM_KEY, LEGACY_MINIMUM_KEY):
            old_quantity, old_amount = trued_up.get(start, (ZERO, ZERO))
            trued_up[start] = (old_quantity + quantity, old_amount + amount)
        else:
            charged[start] = charged.get(start, ZERO) + amount
    for line in adjustments:
        if line.period_start is not None and line.line_key != MINIMUM_KEY:
            charged[line.period_start] = charged.get(line.period_start, ZERO) + round_money(line.amount, currency)
    lines = []
    for period in earlier:
        if period.start not in adjusted:
            continue
        committed = committed_minimum(sub.plan_at(period.start), currency, period, sub.segments[0].start)
        fraction, minimum = committed or (Decimal(1), ZERO)
        target = max(ZERO, minimum - charged.get(period.start, ZERO))
        old_quantity, old_amount = trued_up.get(period.start, (ZERO, ZERO))
        if target == old_amount:
            continue
        # The quantity, as on a true-up line, is the committed share while there is a true-up
        # and nothing once there is none; a share read back from the store carries 9 decimals,
        # so it is left as billed while the true-up stays, never compared.
        quantity = ZERO if target and old_amount else (fraction if target else ZERO) - old_quantity
        label = (
            f"Adjustment for {period.start:%Y-%m-%d %H:%M}–{period.end:%Y-%m-%d %H:%M}"  # noqa: RUF001
            f" ({_true_up_label(fraction)})"
        )
        adjustment = Line("minimum_commitment", None, label, quantity, target - old_amount, line_key=MINIMUM_KEY)
        lines.append(replace(adjustment, period_start=period.start))
    return lines


def _share_moved(sub: Subscription, period: Period, billed: Billed, currency: str) -> bool:
    """Was the period trued up for another share of its minimum than it commits to now?
    A true-up's quantity is the share it was billed for; a period without one was charged at
    least its minimum, which a smaller share leaves so. (Compared on the share only: a minimum
    changed in the catalog since does not reach back.)"""
    committed = committed_minimum(sub.plan_at(period.start), currency, period, sub.segments[0].start)
    billed_share = sum(
        (
            quantity
            for (start, key), (quantity, *_) in billed.items()
            if start == period.start and key in (MINIMUM_KEY, LEGACY_MINIMUM_KEY)
        ),
        ZERO,
    )
    return committed is not None and billed_share != 0 and billed_share != stored_quantity(committed[0])


def advance_keys(sub: Subscription, catalog: Iterable[Plan] = ()) -> list[str]:
    """The line keys of every fee the subscription's plans bill in advance, in order, then
    the ``catalog``'s (a plan a backdated change replaced from the start is no segment of the
    subscription, and what it billed in advance is still to be given back as such)."""
    plans = [*(s.plan for s in sub.segments), *catalog]
    return list(dict.fromkeys(f"{plan.key}:{price.key}" for plan in plans for price in plan.advance_prices))


def advance_lines(
    sub: Subscription, period: Period, billed: Billed, currency: str, catalog: Iterable[Plan] = ()
) -> list[Line]:
    """The period's fees billed in advance, as the subscription now stands, less what earlier
    invoices billed of them (``billed``): the whole fee on the invoice before the period, then
    nothing, unless a plan change or a cancellation changed what the period owes since (its
    share of the fee), when the difference is billed (or credited) on the next invoice. Each line names the period
    it pays for (``period_start`` .. ``service_end``). ``catalog``: see :func:`advance_keys`."""
    owed: dict[str, tuple[Decimal, Decimal, Line, tuple[ServiceWindow, ...]]] = {}
    plans = [*catalog, *(s.plan for s in sub.segments)]
    names = {f"{plan.key}:{p.key}": p.description or p.key for plan in plans for p in plan.advance_prices}
    several = sum(1 for s in sub.segments if overlap(s, period.start, period.end)) > 1
    for segment in sub.segments:
        window = overlap(segment, period.start, period.end)
        if window is None:
            continue
        suffix = f" ({segment.plan.key})" if several else ""
        for price in segment.plan.advance_prices:
            names[f"{segment.plan.key}:{price.key}"] = f"{price.description or price.key}{suffix}"
            if not owes_fees_again(sub, segment, period):
                continue
            line = _flat_line(price, segment.plan, window, period, suffix)
            quantity, amount, first, windows = owed.get(line.line_key, (ZERO, ZERO, line, ()))
            owed[line.line_key] = (
                quantity + stored_quantity(line.quantity),
                amount + round_money(line.amount, currency),
                first,
                windows + stored_windows(line.windows, currency),
            )
    lines = []
    for key in advance_keys(sub, catalog):
        old_quantity, old_amount, *_ = billed.get((period.start, key), NOTHING_BILLED)
        price_key = key.split(":", 1)[1]
        fee = Line(price_key, None, price_key, ZERO, ZERO, line_key=key)  # owed nothing now
        quantity, amount, fee, spans = owed.get(key, (ZERO, ZERO, fee, ()))
        before = billed.get((period.start, key))
        amount, windows = owed_as_billed(quantity, amount, fee, before, currency, spans)
        if (
            quantity == old_quantity
            and (amount == old_amount or old_quantity)
            and not spans_moved(spans, None if before is None else before.windows)
        ):
            # Its share and its spans did not move: a fee changed in the catalog since does not
            # reach back to a period it was billed for.
            continue
        if old_quantity or old_amount:
            fee = Line(price_key, None, f"Adjustment: {names[key]}, billed in advance", ZERO, ZERO, line_key=key)
        lines.append(
            replace(
                fee,
                quantity=quantity - old_quantity,
                amount=amount - old_amount,
                period_start=period.start,
                timing=ADVANCE,
                service_end=period.end,
                windows=windows,
            )
        )
    return lines


def removed_period_refunds(sub: Subscription, billed: Billed, catalog: Iterable[Plan] = ()) -> list[Line]:
    """Everything billed for periods that, after a backdated cancellation, never came (they
    start at or after it), credited back whole, per line key: the fees billed in advance for
    them and, for one already invoiced, its fees in arrears, its usage and its minimum's
    true-up. Usage after the cancellation is not the subscription's to bill."""
    if sub.canceled_at is None:
        return []
    advance = set(advance_keys(sub, catalog))
    meters = usage_keys(sub, catalog)
    lines = []
    for (start, key), (quantity, amount, events, windows) in sorted(billed.items()):
        if start < sub.canceled_at or not (quantity or amount):
            continue
        given_back = _given_back(windows)
        if key in advance:
            label = f"Refund: {key.split(':', 1)[1]}, billed in advance for a period after the cancellation"
            refund = Line(key.split(":", 1)[1], None, label, -quantity, -amount, line_key=key, period_start=start)
            lines.append(replace(refund, timing=ADVANCE, service_end=start, windows=given_back))
            continue
        price_key = MINIMUM_KEY if key in (MINIMUM_KEY, LEGACY_MINIMUM_KEY) else key.split(":", 1)[-1]
        label = f"Refund: {price_key}, billed for a period after the cancellation"
        refund = Line(price_key, meters.get(key), label, -quantity, -amount, line_key=key, period_start=start)
        lines.append(replace(refund, events=_negated(events), windows=given_back))
    return lines


def _negated(events: int | None) -> int | None:
    return None if events is None else -events


def _given_back(windows: tuple[ServiceWindow, ...] | None) -> tuple[ServiceWindow, ...]:
    """The windows of a line giving back all a key billed: its spans negated (none if unknown)."""
    return tuple(window.negated() for window in windows or ())


def already_billed_lines(
    lines: list[Line], billed: Billed, period_start: datetime, metered: Mapping[str, str] | None = None
) -> list[Line]:
    """For each usage line, what earlier invoices of the same period (progressive ones)
    billed of it, deducted: the lines show the period's whole usage, the deduction what was
    paid for already. ``metered`` (:func:`usage_keys`): what they billed under a usage key the
    lines no longer have (a plan a backdated change took the period off) is deducted too."""
    out, seen = [], set()
    for line in lines:
        if line.meter is None or line.period_start is not None or line.line_key in seen:
            continue
        seen.add(line.line_key)  # one deduction per key, though a plan can appear twice (A -> B -> A)
        quantity, amount, events, windows = billed.get((period_start, line.line_key), NOTHING_BILLED)
        if quantity or amount:
            label = f"Billed on earlier invoices this period ({line.description})"
            deduction = Line(line.price_key, line.meter, label, -quantity, -amount, line_key=line.line_key)
            out.append(replace(deduction, already_billed=True, events=_negated(events), windows=_given_back(windows)))
    for key, meter in sorted((metered or {}).items()):
        quantity, amount, events, windows = billed.get((period_start, key), NOTHING_BILLED)
        if key not in seen and (quantity or amount):
            price_key = key.split(":", 1)[1]
            label = f"Billed on earlier invoices this period ({price_key}, on a plan the period no longer has)"
            deduction = Line(price_key, meter, label, -quantity, -amount, line_key=key)
            out.append(replace(deduction, already_billed=True, events=_negated(events), windows=_given_back(windows)))
    return out


@dataclass(frozen=True)
class Invoice:
    """The ``bastionary.invoice.finalized.v1`` data: amounts as decimal strings, times ISO 8601."""

    invoice_id: str
    customer_id: str
    subscription_id: str
    plan: str
    currency: str
    kind: str
    period_start: str
    period_end: str
    issued_at: str
    due_at: str
    lines: tuple[dict[str, Any], ...]
    subtotal: str
    credits_applied: str
    credit_allocations: tuple[dict[str, str], ...]
    total: str
    status: str
    credits_expired: tuple[dict[str, str], ...] = ()
    # What a negative subtotal leaves the customer: a credit the next invoices draw on.
    carried_forward: str = "0"
    # An auto top-up this invoice's draws set off (the customer's balance fell below the
    # rule's threshold): currency, threshold, amount, balance. Empty when none.
    topup_requested: tuple[dict[str, str], ...] = ()
    # Tax, one line per rate (rating/tax.py), and its sum; the total adds the exclusive lines.
    tax_lines: tuple[dict[str, Any], ...] = ()
    tax: str = "0"
    # The rates this invoice's own lines were taxed at (key, name, rate, inclusive): a later
    # line adjusting its period is taxed at them.
    tax_rates: tuple[dict[str, Any], ...] = ()
    # Who the invoice is from and to, as the catalog and the customer record said when it was
    # rated: an issued invoice never changes.
    issuer: dict[str, Any] = field(default_factory=dict)
    bill_to: dict[str, Any] = field(default_factory=dict)
    plans: tuple[str, ...] = ()  # every plan in force during the period, in order; ``plan`` is the last
    # Issued for a period that ended before its subscription was received: dunning leaves it
    # alone unless told to (BASTIONARY_DUNNING_BACKFILL).
    backfill: bool = False

    def document(self) -> dict[str, Any]:
        """The JSON document, keys in this order (stored documents are republished as they are)."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in vars(self).items()}


def finalize(
    sub: Subscription,
    plan: Plan,
    period: Period,
    lines: list[Line],
    issued_at: datetime,
    grants: list[Grant],
    drawn: dict[str, Decimal],
    kind: str = "period",
    taxes: list[TaxRate] | None = None,
    id_key: str | None = None,
    credits_at: datetime | None = None,
    line_rates: Sequence[list[TaxRate]] | None = None,
) -> tuple[Invoice, list[Allocation]]:
    """Round the lines, add tax, apply credits usable at ``credits_at`` (default: the period's
    end) to the subtotal plus the added tax, and shape the invoice. ``id_key`` replaces
    ``kind`` in the invoice id (a progressive invoice's names its threshold).

    ``taxes``: the rates of this invoice's own lines. ``line_rates``: per line, the rates it is
    taxed at, for lines adjusting what earlier invoices billed (rating/tax.py); default all
    at ``taxes``."""
    currency = plan.currency
    rounded = [round_money(line.amount, currency) for line in lines]
    subtotal = round_money(sum(rounded, ZERO), currency)
    own = taxes or []
    taxed = grouped_tax_lines(list(zip(rounded, line_rates or [own] * len(lines), strict=True)), currency)
    payable = subtotal + added_tax(taxed)
    allocations = allocate(grants, drawn, payable, currency, credits_at or period.end)
    credits = sum((a.amount for a in allocations), ZERO)
    total = max(ZERO, payable - credits)
    # Credits draw nothing from a negative subtotal; what it gives back carries its reversed tax.
    carried = max(ZERO, -payable)
    invoice = Invoice(
        invoice_id=invoice_id(sub.subscription_id, period.start, id_key or kind),
        customer_id=sub.customer_id,
        subscription_id=sub.subscription_id,
        plan=plan.key,
        currency=currency,
        kind=kind,
        period_start=period.start.isoformat(),
        period_end=period.end.isoformat(),
        issued_at=issued_at.isoformat(),
        due_at=(issued_at + parse_iso_duration(plan.payment_terms)).isoformat(),
        lines=tuple(line.as_dict(currency) for line in lines),
        subtotal=str(subtotal),
        credits_applied=format_money(credits, currency),
        credit_allocations=tuple(
            {"grant_id": a.grant_id, "amount": str(a.amount), "funding": a.funding} for a in allocations
        ),
        total=format_money(total, currency),
        status="finalized",
        carried_forward=format_money(carried, currency),
        tax_lines=tuple(taxed),
        tax=format_money(sum((Decimal(t["amount"]) for t in taxed), ZERO), currency),
        tax_rates=tuple(applied_rates(own)),
    )
    return invoice, allocations


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")
