"""One invoice for one closed period of one subscription: a pure function of its inputs.

Usage is read *as of a cutoff* (``period_end + grace``, on the broker's ingest clock), so
the same period rated twice, by two raters or after a crash, gives the same invoice. Usage
that arrives after the cutoff is billed on the next invoice as an adjustment: the price of
the period's usage as of the new cutoff minus what was billed for it (``adjustments.py``;
fees billed in advance, ``advance.py``; what was billed, ``billed.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_DOWN, Context, Decimal, localcontext
from typing import Any

from bastionary.credits.ledger import Allocation, Grant, allocate
from bastionary.money import EXACT, format_money, plain_decimal, round_money
from bastionary.rating.plans import FlatPrice, MeteredPrice, PerUnitPrice, Plan
from bastionary.rating.pricing import Usage, price_usage
from bastionary.rating.service_windows import ServiceWindow
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
            # As invoice_lines keeps it, and as its spans show it: a prorated share is a quotient
            # of 28 digits, which the line would show as one quantity and its span as another.
            "quantity": _text(stored_quantity(self.quantity)),
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
        if self.windows:
            out["service_spans"] = [
                {
                    "start": window.start.isoformat(),
                    "end": window.end.isoformat(),
                    "quantity": _text(stored_quantity(window.quantity)),
                    "amount": format_money(window.amount, currency),
                }
                for window in self.windows
            ]
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


def prorated(amount: Decimal, plan: Plan, start: datetime, end: datetime, period: Period) -> Decimal:
    """``amount`` (a fee or a minimum, per whole period) for [start, end), a span of ``period``:
    :func:`share` of it, rounded once to the context's digits from the exact quotient. The
    share itself is rounded (1/30 is 0.0333...3), and multiplied by it, an amount that ends on
    half a minor unit fell below it: 19.95 for 1 day of 30 is 0.665, billed 0.66, not 0.67."""
    if not plan.prorate:
        return amount
    with localcontext(EXACT):
        seconds = Decimal(str((end - start).total_seconds()))
        exact = amount * seconds / Decimal(str((period.full_end - period.start).total_seconds()))
    return +exact


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


def flat_line(price: FlatPrice, plan: Plan, window: tuple[datetime, datetime], period: Period, suffix: str) -> Line:
    """The fee's share of ``period`` for ``window``, a span of it on ``plan``."""
    fraction = share(plan, *window, period)
    text = price.description or price.key
    label = f"{text}{suffix}" + (f", prorated {fraction:.4f}" if fraction != 1 else "")
    amount = prorated(price.amount, plan, *window, period)
    line = Line(price.key, None, label, fraction, amount, line_key=f"{plan.key}:{price.key}")
    # A fee that is not prorated owes the same for any span: its spans tell nothing.
    windows = (ServiceWindow(*window, fraction, amount),) if plan.prorate else ()
    return replace(line, unit_price=price.amount, windows=windows)


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
                    lines.append(flat_line(price, plan, window, period, suffix))
                continue
            used = usage(price, sub.customer_id, lo, hi, as_of)
            priced = price_usage(price, used, plan.currency)
            label = f"{price.description or price.key}{suffix}"
            unit = price.unit_amount if isinstance(price, PerUnitPrice) else None
            events = used.events if priced.percentage is not None else None
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
                    events=events,
                    windows=(ServiceWindow(lo, hi, used.quantity, priced.amount, events),),
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
    ran_to = max(period.end, ran_from)
    fraction = share(plan, ran_from, ran_to, period)
    return fraction, round_money(prorated(plan.minimum_commitment, plan, ran_from, ran_to, period), currency)


def true_up_label(fraction: Decimal) -> str:
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
    return Line("minimum_commitment", None, true_up_label(fraction), fraction, minimum - charged, line_key=MINIMUM_KEY)


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
    return plain_decimal(value)  # every digit: a quantity may have 38, normalize() keeps 28
