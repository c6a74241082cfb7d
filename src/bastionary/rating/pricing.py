"""The five usage price models (plus flat fees), as Stripe and Lago define them.

Amounts come back unrounded and exact; the invoice rounds each line once. ``tiers`` explains
the amount: one entry per tier that priced units. Its text (and a percentage price's terms)
follows the invoice's: quantities, rates and unit prices exact with no trailing zeros, amounts
at the currency's precision when the currency is given, the tiers' adding up to the amount
rounded (what the line shows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

from bastionary.money import EXACT, format_money, plain_decimal, round_money
from bastionary.rating.plans import (
    GraduatedPrice,
    MeteredPrice,
    PackagePrice,
    PercentagePrice,
    PerUnitPrice,
    Tier,
    VolumePrice,
)

ZERO = Decimal(0)


@dataclass
class Priced:
    amount: Decimal
    tiers: list[dict[str, Any]] = field(default_factory=list)  # JSON, on the invoice line
    percentage: dict[str, Any] | None = None  # a percentage price's terms and what they gave, on the line


@dataclass(frozen=True)
class Usage:
    """What a price needs of a meter over a period: its value, and for ``percentage``
    the number of events (``fixed_amount`` is charged per event)."""

    quantity: Decimal
    events: int = 0


def price_usage(price: MeteredPrice, usage: Usage, currency: str | None = None) -> Priced:
    """``currency``: the plan's, for the amounts in ``tiers`` and ``percentage``; without it
    they keep every digit (the amount itself is never rounded here)."""
    with localcontext(EXACT):  # exact before the invoice rounds it (bastionary.money.EXACT)
        return _priced(price, max(usage.quantity, ZERO), usage.events, currency)


def _priced(price: MeteredPrice, quantity: Decimal, events: int, currency: str | None) -> Priced:
    if isinstance(price, PerUnitPrice):
        return Priced(quantity * price.unit_amount)
    if isinstance(price, GraduatedPrice):
        return graduated(price.tiers, quantity, currency)
    if isinstance(price, VolumePrice):
        return volume(price.tiers, quantity, currency)
    if isinstance(price, PackagePrice):
        packages = package_count(quantity, price.package_size)
        return Priced(packages * price.package_amount, [{"packages": plain_decimal(packages)}])
    if isinstance(price, PercentagePrice):
        return percentage(price, quantity, events, currency)
    raise TypeError(f"not a usage price: {type(price).__name__}")


def package_count(quantity: Decimal, size: Decimal) -> Decimal:
    """Packages started: ``quantity / size`` rounded up, from the exact integer quotient and
    remainder (a rounded quotient of 10^19 + 10^-9 units would drop the last package)."""
    whole, rest = divmod(quantity, size)
    return whole + 1 if rest else whole


def graduated(tiers: list[Tier], quantity: Decimal, currency: str | None = None) -> Priced:
    """Each unit at the price of the tier it falls in; a tier's flat fee once a unit enters it.

    Zero usage enters no tier and costs nothing (use a flat price for a base fee)."""
    total, lower, parts = ZERO, ZERO, []
    for index, tier in enumerate(tiers):
        if quantity <= lower:
            break
        upper = tier.up_to
        units = (min(quantity, upper) if upper is not None else quantity) - lower
        amount = units * tier.unit_amount + tier.flat_amount
        before = total
        total += amount
        # What the tier adds to the running total, each rounded: the tiers then add up to the
        # line, which is the total rounded once. Rounded on their own they need not (two tiers
        # of 0.015 showed 0.02 and 0.02 on a line of 0.03).
        shown = amount if currency is None else round_money(total, currency) - round_money(before, currency)
        parts.append(_tier_part(index, tier, units, shown, currency))
        if upper is None or quantity <= upper:
            break
        lower = upper
    return Priced(total, parts)


def volume(tiers: list[Tier], quantity: Decimal, currency: str | None = None) -> Priced:
    """Every unit at the price of the tier the total lands in; zero usage costs nothing."""
    if quantity <= 0:
        return Priced(ZERO, [])
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            amount = quantity * tier.unit_amount + tier.flat_amount
            return Priced(amount, [_tier_part(index, tier, quantity, amount, currency)])
    raise AssertionError("the last tier is unbounded")  # guaranteed by the catalog


def percentage(price: PercentagePrice, quantity: Decimal, events: int, currency: str | None = None) -> Priced:
    """``rate`` of the value plus ``fixed_amount`` per event, within ``min_amount`` ..
    ``max_amount``. A period without events costs nothing: the minimum is a floor on what
    usage costs, not a fee for having the price (as Stripe and Lago charge a minimum only
    on a transaction)."""
    amount = quantity * price.rate + price.fixed_amount * events
    if price.min_amount is not None and events > 0:
        amount = max(amount, price.min_amount)
    if price.max_amount is not None:
        amount = min(amount, price.max_amount)
    terms = {
        "rate": plain_decimal(price.rate),
        "value": plain_decimal(quantity),
        "events": events,
        "fixed_amount": _catalog_amount(price.fixed_amount, currency),
        "min_amount": None if price.min_amount is None else _catalog_amount(price.min_amount, currency),
        "max_amount": None if price.max_amount is None else _catalog_amount(price.max_amount, currency),
    }
    return Priced(amount, [], terms)


def _tier_part(index: int, tier: Tier, units: Decimal, amount: Decimal, currency: str | None) -> dict[str, Any]:
    # ``unit_amount`` is a unit price, exact like the line's ``unit_price`` (0.00002 a token
    # would read 0.00 at the cent).
    return {
        "tier": index + 1,
        "up_to": None if tier.up_to is None else plain_decimal(tier.up_to),
        "units": plain_decimal(units),
        "unit_amount": plain_decimal(tier.unit_amount),
        "flat_amount": _catalog_amount(tier.flat_amount, currency),
        "amount": plain_decimal(amount) if currency is None else format_money(amount, currency),
    }


def _catalog_amount(value: Decimal, currency: str | None) -> str:
    """A catalog amount at the currency's precision, or with the catalog's own digits where it
    has more (the catalog does not hold amounts to the minor unit, and rounded, the terms would
    misstate what was charged: 0.001 per event is not 0.00) or no currency is given."""
    if currency is not None and round_money(value, currency) == value:
        return format_money(value, currency)
    return format(value, "f")  # "1e1" in the YAML is 1E+1 to str()
