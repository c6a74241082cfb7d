"""What invoices already billed of a period, per line key, as ``invoice_lines`` keeps it
(summed: a share or a quantity, an amount rounded once per line, a percentage price's events,
the spans billed), and what a fee owes against it when its share moved since: a fee changed
in the catalog does not reach back to what was billed (docs/pricing.md, "Late usage")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from bastionary.money import round_money
from bastionary.rating.invoice import ZERO, Line, stored_quantity
from bastionary.rating.service_windows import ServiceWindow, fee_unchanged, net_windows, owed_windows


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
        w._replace(quantity=stored_quantity(w.quantity), amount=round_money(w.amount, currency)) for w in windows
    )


def line_billing(line: Line, currency: str) -> Billing:
    """What one line bills, as ``invoice_lines`` keeps it. A line billing something without
    spans (a true-up, a fee that is not prorated) leaves its key's spans unknown."""
    quantity, amount = stored_quantity(line.quantity), round_money(line.amount, currency)
    if line.windows:
        windows: tuple[ServiceWindow, ...] | None = stored_windows(line.windows, currency)
    else:
        windows = None if quantity or amount else ()
    return Billing(quantity, amount, line.events, windows)


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
        billed[key] = combined(billed.get(key, NOTHING_BILLED), line_billing(line, currency))


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
