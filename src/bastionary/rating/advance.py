"""Fees billed in advance: the whole fee on the invoice before its period, then, should a
plan change or a cancellation move the period's share (or its spans) since, the difference
on the next invoice."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal

from bastionary.money import round_money
from bastionary.rating.billed import NOTHING_BILLED, Billed, owed_as_billed, stored_windows
from bastionary.rating.invoice import (
    ADVANCE,
    ZERO,
    Line,
    Period,
    Subscription,
    flat_line,
    overlap,
    owes_fees_again,
    stored_quantity,
)
from bastionary.rating.plans import Plan
from bastionary.rating.service_windows import ServiceWindow, spans_moved


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
            line = flat_line(price, segment.plan, window, period, suffix)
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
