"""What a line billed, span by span of its period (``invoice_lines.windows``).

A line bills a span of a period, [start, end) of one plan segment: a prorated fee its share
of the period, a usage line its segment's usage. Later invoices adjust it (a plan change or
a cancellation received late, late usage) while the catalog may change in between. Summed per
line key, what was billed cannot tell its parts apart; kept per span, it can:

- a fee's span given back is credited at what was paid for that span, and a span added is
  charged at today's fee, where the sums could only credit the average of what the key's
  parts were paid;
- a key with two segments in one period (A -> B -> A) whose price counts each segment apart
  (tiers, packages, a bounded percentage) keeps its amount when no segment's usage moved,
  where the sums could not tell usage moved between the segments from none moved.

An adjusting line's windows are the windows it replaces, negated, and the windows it bills in
their place, so the windows a key still bills are its lines' windows less exact opposites
(:func:`net_windows`). A line without windows (a fee with ``prorate: false``, a true-up, a
line stored before they were kept) leaves its key's windows unknown, and the key is priced
from its sums, as before (docs/pricing.md, "Late usage").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from bastionary.money import round_money

ZERO = Decimal(0)
# Shares are kept to 9 decimals, truncated: a share read back, or a part of it, may fall short
# of the exact share by a few units of the last; one second of a three-year period is 3e-8.
SHARE_TOLERANCE = Decimal("1e-8")
SHARE_DIGIT = Decimal("1e-9")  # a share's last digit as kept (invoice_lines.quantity's scale)


class ServiceWindow(NamedTuple):
    """A span of a period a line bills (or, negative, gives back)."""

    start: datetime
    end: datetime
    # A fee's share of the period, or the span's usage; to 9 decimals, as invoice_lines.quantity.
    quantity: Decimal
    amount: Decimal  # what it costs, rounded to the currency's minor unit
    # A percentage price's events in the span (its fixed amount is charged per event, and a
    # bound applies to each segment apart, so events of no value moving between two segments
    # of one plan move its amount); None on every other line, and where not known.
    events: int | None = None

    def negated(self) -> ServiceWindow:
        events = None if self.events is None else -self.events
        return ServiceWindow(self.start, self.end, -self.quantity, -self.amount, events)

    def bills(self) -> bool:
        """Whether the window bills anything: a share or usage, an amount, or events."""
        return bool(self.quantity or self.amount or self.events)


def net_windows(entries: Iterable[ServiceWindow]) -> tuple[ServiceWindow, ...]:
    """The windows still billed: each entry less its exact opposite, in order of time."""
    entries = tuple(entries)
    if all(entry.quantity >= 0 and entry.amount >= 0 and (entry.events or 0) >= 0 for entry in entries):
        return tuple(sorted((entry for entry in entries if entry.bills()), key=_order))  # nothing given back
    left = Counter(entries)
    for entry in list(left):
        if (entry.quantity, entry.amount, entry.events or 0) > (ZERO, ZERO, 0):
            opposite = entry.negated()
            cancelled = min(left[entry], left[opposite])
            left[entry] -= cancelled
            left[opposite] -= cancelled
    kept = [entry for entry, count in left.items() for _ in range(count) if entry.bills()]
    return tuple(sorted(kept, key=_order))


def _order(window: ServiceWindow) -> tuple[datetime, datetime, Decimal, Decimal, int]:
    # Sorted by time; events may be None, which does not compare with an int.
    return window.start, window.end, window.quantity, window.amount, window.events or 0


def fee_unchanged(fee: Decimal, billed: Sequence[ServiceWindow], currency: str) -> bool:
    """Whether today's fee (per whole period) gives what every window still billed was paid."""
    return all(_fee_gives(fee, window, currency) for window in billed)


def _fee_gives(fee: Decimal, window: ServiceWindow, currency: str) -> bool:
    # The amount was rounded from the exact share, the share kept cut to 9 decimals: the exact
    # share lies within one last digit of it, away from zero. On half a minor unit the two
    # round apart (19.95 for 1 day of 30 is 0.665, billed 0.67; 0.033333333 of it is 0.66),
    # and a fee seen as changed credits a span given back at a cent off today's fee.
    beyond = window.quantity + SHARE_DIGIT.copy_sign(window.quantity)
    low, high = sorted((round_money(fee * window.quantity, currency), round_money(fee * beyond, currency)))
    return low <= window.amount <= high


def _seconds(start: datetime, end: datetime) -> Decimal:
    return Decimal(str((end - start).total_seconds()))


def owed_windows(
    now: Sequence[ServiceWindow], fee: Decimal, billed: Sequence[ServiceWindow], currency: str
) -> tuple[ServiceWindow, ...]:
    """``now`` (the fee's windows as the subscription stands) with what each owes: the part of
    it a window still billed covers, at what was paid for that part (the window's amount,
    spread evenly over its time), and the rest at today's ``fee`` per whole period. Each
    window's amount is rounded once, so a part given back may be a cent off the fee it was
    paid at (never more)."""
    out = []
    for window in now:
        paid = covered = ZERO
        for entry in billed:
            lo, hi = max(window.start, entry.start), min(window.end, entry.end)
            if lo >= hi or entry.end <= entry.start:
                continue
            part = _seconds(lo, hi) / _seconds(entry.start, entry.end)
            paid += entry.amount * part
            covered += entry.quantity * part
        rest = window.quantity - covered
        if covered > 0 and rest < SHARE_TOLERANCE:
            # Covered whole (or, should windows still billed overlap, more than whole: what
            # they paid, scaled to the window's share).
            owed = paid if rest > -SHARE_TOLERANCE else paid * window.quantity / covered
        else:
            owed = paid + fee * rest
        out.append(window._replace(amount=round_money(owed, currency)))
    return tuple(out)


def _spans(windows: Iterable[ServiceWindow]) -> list[tuple[datetime, datetime]]:
    """The time that ``windows`` bill, in order, adjacent ones joined (a change to the plan
    already held cuts a span in two, and moves nothing)."""
    out: list[tuple[datetime, datetime]] = []
    for window in sorted(w for w in windows if w.quantity):
        if out and out[-1][1] == window.start:
            out[-1] = (out[-1][0], window.end)
        else:
            out.append((window.start, window.end))
    return out


def spans_moved(now: Iterable[ServiceWindow], billed: Iterable[ServiceWindow] | None) -> bool:
    """Whether a fee bills other spans of its period now than those still billed (None: not
    known span by span, so not told). Two plans in turn (A -> B -> A) can swap spans and keep
    their shares of the period; what each was paid for a span tells them apart once a span
    is given back."""
    return billed is not None and _spans(now) != _spans(billed)


def same_usage(now: Iterable[ServiceWindow], billed: Iterable[ServiceWindow] | None) -> bool:
    """Whether each span holds the usage it was billed for (None: not known span by span), and,
    for a percentage price, the events, where every span still billed keeps its count (spans
    stored before 2026-12-07 do not: they are compared by usage alone). Spans of no usage (and
    no events) count for nothing either side."""
    if billed is None:
        return False
    billed = tuple(billed)
    if all(w.events is not None for w in billed):
        return Counter((w.start, w.end, w.quantity, w.events) for w in now if w.quantity or w.events) == Counter(
            (w.start, w.end, w.quantity, w.events) for w in billed if w.quantity or w.events
        )
    return Counter((w.start, w.end, w.quantity) for w in now if w.quantity) == Counter(
        (w.start, w.end, w.quantity) for w in billed if w.quantity
    )
