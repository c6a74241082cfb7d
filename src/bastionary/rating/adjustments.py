"""Earlier periods billed again on a later invoice: late usage, plan changes and cancellations
received after a period was invoiced (:func:`replanned`), its minimum's true-up recomputed,
refunds of periods a backdated cancellation took away, and the deductions of a progressive
invoice (what earlier invoices of the same period billed).

What is owed now is compared with what invoices billed (``billing.Billed``, as stored), never
with a recomputation of it, so late usage is billed once and a price changed in the catalog
does not reach back to a period whose usage and shares did not move (docs/pricing.md, "Late
usage").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from bastionary.money import round_money
from bastionary.rating.advance import advance_keys
from bastionary.rating.billed import NOTHING_BILLED, Billed, Billing, added_events, owed_as_billed, stored_windows
from bastionary.rating.invoice import (
    ADVANCE,
    LEGACY_MINIMUM_KEY,
    MINIMUM_KEY,
    ZERO,
    Line,
    Period,
    Subscription,
    UsageLookup,
    committed_minimum,
    overlap,
    owes_fees_again,
    period_lines,
    share,
    stored_quantity,
    true_up_label,
)
from bastionary.rating.plans import FlatPrice, Plan
from bastionary.rating.service_windows import SHARE_TOLERANCE, ServiceWindow, same_usage, spans_moved


def _by_period(billed: Billed) -> dict[datetime, dict[str, Billing]]:
    out: dict[datetime, dict[str, Billing]] = {}
    for (start, key), value in billed.items():
        out.setdefault(start, {})[key] = value
    return out


def _priced_plans_over(sub: Subscription, period: Period) -> set[str]:
    """The plans over the period that bill lines (a plan without prices names no line key)."""
    return {s.plan.key for s in sub.segments if s.plan.prices and overlap(s, period.start, period.end)}


def _plans_at_start(sub: Subscription, period: Period) -> set[str]:
    """The plans over the period from its start, or from the subscription's."""
    return {
        s.plan.key
        for s in sub.segments
        if overlap(s, period.start, period.end) and (s.start <= period.start or s is sub.segments[0])
    }


def _rated_plans_over(sub: Subscription, period: Period) -> set[str]:
    """The plans over the period that rating it writes a line for: those with a price other
    than a fee in advance (:func:`period_lines`)."""
    return {
        s.plan.key
        for s in sub.segments
        if len(s.plan.advance_prices) < len(s.plan.prices) and overlap(s, period.start, period.end)
    }


def replanned(
    sub: Subscription, periods: list[Period], billed: Billed, invoiced: Collection[datetime] | None = None
) -> set[datetime]:
    """The starts of the periods to rate again whole: their invoices billed them on other
    plans, or other shares or spans of their plans, than the subscription now has over them (a
    plan change, or a cancellation cutting the period, received after the period was invoiced).

    Told by a plan now over the period that none of its lines named, other than a fee in
    advance of a plan starting inside the period (a plan change's advance invoice bills it
    before the period is rated on the plan: :func:`_rated_plans`), by what is still billed
    under a plan it no longer has, and by the shares of the fees in arrears it billed (a flat
    line's quantity is its share) and their spans where known (A -> B -> A can move both
    plans' spans and keep their shares: :func:`spans_moved`). Each is settled once the period
    is rated again, and none moves when a price changes, or is added, in the catalog. A plan without prices (free, or a
    minimum commitment alone) names no line: it is not looked for, and a period billed on it
    alone holds no line key, so a plan with prices over it now is one no line named.

    ``invoiced``: the starts of the ``periods`` invoiced (None: all, as when rating, where
    earlier periods are rated first); a preview's may not be yet, and one holding no line key
    but fees in advance (billed before the period) is then not taken for rated."""
    by_period = _by_period(billed)
    advance = set(advance_keys(sub))
    out = set()
    for period in periods:
        held = {key: value for key, value in by_period.get(period.start, {}).items() if ":" in key}
        named = _rated_plans(held, advance)
        if not named and invoiced is not None and period.start not in invoiced:
            continue
        # A fee in advance of the plan the period starts on was billed on the invoice before
        # it (or the first period's advance invoice), and the period then rated on that plan,
        # which may have billed nothing else: a price in arrears added to it in the catalog
        # since must not reach back. A plan starting inside the period had its fee billed on
        # a plan change's advance invoice, which a change received late issues before the
        # period is rated again: its prices in arrears are still owed.
        named |= {key.split(":", 1)[0] for key in held if key in advance} & _plans_at_start(sub, period)
        plans_now = _priced_plans_over(sub, period)
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
        moved = any(abs(held[key][0] - fraction) > SHARE_TOLERANCE for key, fraction in shares.items()) or any(
            spans_moved(spans.get(key, ()), held[key].windows) for key in shares
        )
        if _rated_plans_over(sub, period) - named or left_on_others or moved:
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
    or not the period is rated again whole. A price added to a plan in the catalog since the
    period was rated on that plan is not billed for it (:func:`_rated_plans`); a plan new to the
    period (a plan change received later) is billed all its prices.

    A period billed on other plans than it now has (:func:`replanned`) is rated again whole:
    its fees in arrears too, and what was billed under a line key it no longer has is taken
    back (its fees in advance are :func:`advance_lines`').
    """
    advance = set(advance_keys(sub, catalog))  # taken back by advance_lines, as fees in advance
    moved = replanned(sub, earlier, billed, invoiced)
    by_period = _by_period(billed)
    lines = []
    for period in earlier:
        again = period.start in moved
        rated = _rated_plans(by_period.get(period.start, {}), advance)
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
            if (period.start, key) not in billed and key.split(":", 1)[0] in rated:
                # Rating a plan writes a line for each of its prices, usage of 0 included: a
                # price of a plan the period was rated on that no line names was added in the
                # catalog since, and does not reach back (its usage, 0 -> q, is no late usage).
                continue
            old = billed.get((period.start, key), NOTHING_BILLED)
            # A percentage price's fixed amount per event moves with events its quantity does
            # not count: its events are compared too, where both counts are known.
            unmoved = (
                quantity == old.quantity
                and (
                    segments.get(key) == 1
                    or (_priced_linearly(line) and not _below_zero(spans) and not _below_zero(old.windows))
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


def _rated_plans(held: Mapping[str, Billing], advance: Collection[str]) -> set[str]:
    """The plans the period was rated on: those naming a line of it other than a fee in
    advance (one is billed on the invoice before the period, or on a plan change's advance
    invoice, before the period is rated on the plan). A plan rated on the period and taken
    off it since is still one: its lines are taken back, not removed."""
    return {key.split(":", 1)[0] for key in held if ":" in key and key not in advance}


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

    Only the rounding can tell a split apart (each segment's line is rounded to the minor
    unit, so usage moved between two segments with the sums unchanged may leave the period a
    cent off what rating it again from scratch would give), and a segment whose usage is below
    zero, priced as zero (:func:`_below_zero`: such a key is compared span by span)."""
    if line.unit_price is not None:
        return True
    terms = line.percentage
    return terms is not None and terms.get("min_amount") is None and terms.get("max_amount") is None


def _below_zero(spans: Iterable[ServiceWindow] | None) -> bool:
    """Whether a segment's usage is below zero (a correction larger than its usage): priced
    as zero, so even a linear price then costs more than its summed quantity says."""
    return any(span.quantity < 0 for span in spans or ())


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
            f" ({true_up_label(fraction)})"
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
            # It gives back what was paid for the whole period: the document names that period
            # (ending at its start, it read as a refund for a single day).
            service_end = sub.first_plan.interval.period_containing(sub.anchor, start)[2]
            lines.append(replace(refund, timing=ADVANCE, service_end=service_end, windows=given_back))
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
