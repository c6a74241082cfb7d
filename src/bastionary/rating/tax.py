"""Tax on invoices, and who issues them: the catalog's ``invoicing`` section.

A rate applies to a customer whose address country is in its ``countries`` (every customer
when the list is empty), unless the customer is tax exempt. Tax is computed on the
subtotal once per rate, and rounded once per rate to the currency's minor unit,
``ROUND_HALF_UP`` (away from zero, so a negative subtotal's tax is exactly the negative of
the positive one's):

- exclusive (the default): ``subtotal x rate``, added to the invoice;
- inclusive (the prices include it): ``subtotal x rate / (1 + the inclusive rates)``, shown
  but not added; its ``taxable`` is the subtotal less the inclusive tax shown, so that the two
  add up to what the customer pays.

A negative subtotal (a correction, or a refund of fees billed in advance, larger than the
period's charges) takes negative tax: it reverses the tax collected on what it takes back,
and the invoice carries the amount with its tax forward to the customer's balance. Without
the reversal, the next invoice would collect the tax again on usage the balance pays for.
A zero subtotal is taxed nothing.

A line that adjusts what an earlier invoice billed is taxed at the rates that invoice applied
(its document's ``tax_rates``), not at today's: a correction reverses the tax that was
collected (exactly when taken back in one step: each invoice rounds once per set of rates, so
a correction spread over N invoices may be off by up to N half minor units), even after a
change of rate or of the customer's exemption or country, and
late usage is taxed as the period it belongs to was (the rater picks the invoice:
``Rater._line_rates``). Lines are taxed in groups, one per set
of rates, each group rounded as above; a period whose rates are not known (its invoice had a
zero subtotal, or none was issued) is taxed at today's.

Credits pay the invoice, tax included: they are a means of payment, not a discount.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastionary.money import EXACT, format_money, round_money

ZERO = Decimal(0)
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class TaxRate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)
    name: str = Field(min_length=1)  # as the invoice shows it, e.g. "VAT 19%"
    rate: Decimal = Field(gt=0, lt=1, allow_inf_nan=False)
    countries: list[Country] = []  # empty: every customer
    inclusive: bool = False

    @field_validator("rate")
    @classmethod
    def _scale(cls, rate: Decimal) -> Decimal:
        if rate != rate.quantize(Decimal("0.000001")):
            raise ValueError("a rate has at most 6 decimals (0.19 is 19%)")
        return rate


class Issuer(BaseModel):
    """Who the invoices are from; every field is printed as given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    address: list[str] = []  # one entry per printed line
    tax_id: str = ""
    email: str = ""
    payment_instructions: str = ""  # e.g. bank details; printed under the totals


class Invoicing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Issuer = Issuer()
    taxes: list[TaxRate] = []
    hide_zero_lines: bool = True  # lines of zero quantity and amount are left off the page (kept in the JSON)

    @field_validator("taxes")
    @classmethod
    def _unique(cls, taxes: list[TaxRate]) -> list[TaxRate]:
        keys = [t.key for t in taxes]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            # Named, as duplicate meter, plan and price keys are: a long list is searched otherwise.
            raise ValueError(f"duplicate tax keys: {', '.join(dupes)}")
        return taxes


@dataclass(frozen=True)
class TaxProfile:
    country: str = ""
    exempt: bool = False


def rates_for(taxes: list[TaxRate], profile: TaxProfile) -> list[TaxRate]:
    if profile.exempt:
        return []
    return [t for t in taxes if not t.countries or profile.country in t.countries]


def tax_lines(subtotal: Decimal, currency: str, rates: list[TaxRate]) -> list[dict[str, Any]]:
    """One line per rate: key, name, rate, inclusive, taxable, amount (decimal strings);
    negative for a negative subtotal."""
    if subtotal == 0 or not rates:
        return []
    with localcontext(EXACT):  # rounded once, from the exact product (bastionary.money.EXACT)
        inclusive = sum((t.rate for t in rates if t.inclusive), ZERO)
        net = subtotal / (1 + inclusive)  # what the inclusive prices are before their tax
        amounts = [round_money((net if tax.inclusive else subtotal) * tax.rate, currency) for tax in rates]
        # The net shown is what the prices hold besides their tax as shown, so that the two add
        # up to the subtotal: the net and each tax rounded apart could be a minor unit over it
        # (120.03 with 20% inside: 100.03 and 20.01).
        shown_net = subtotal - sum((a for tax, a in zip(rates, amounts, strict=True) if tax.inclusive), ZERO)
        return [
            {
                "key": tax.key,
                "name": tax.name,
                "rate": format(tax.rate.normalize(), "f"),
                "inclusive": tax.inclusive,
                "taxable": format_money(shown_net if tax.inclusive else subtotal, currency),
                "amount": format_money(amount, currency),
            }
            for tax, amount in zip(rates, amounts, strict=True)
        ]


def grouped_tax_lines(groups: list[tuple[Decimal, list[TaxRate]]], currency: str) -> list[dict[str, Any]]:
    """:func:`tax_lines` of each (subtotal, rates) group, the groups of one set of rates summed
    first (so an invoice taxed at one set of rates is taxed exactly as before), then lines of
    the same key, rate and kind merged."""
    subtotals: dict[tuple[tuple[str, str, Decimal, bool], ...], tuple[Decimal, list[TaxRate]]] = {}
    for subtotal, rates in groups:
        key = tuple((t.key, t.name, t.rate, t.inclusive) for t in rates)
        summed, _ = subtotals.get(key, (ZERO, rates))
        subtotals[key] = (summed + subtotal, rates)
    merged: dict[tuple[str, str, str, bool], dict[str, Any]] = {}
    for subtotal, rates in subtotals.values():
        for line in tax_lines(subtotal, currency, rates):
            identity = (line["key"], line["name"], line["rate"], line["inclusive"])
            if identity in merged:
                before = merged[identity]
                for name in ("taxable", "amount"):
                    before[name] = format_money(Decimal(before[name]) + Decimal(line[name]), currency)
            else:
                merged[identity] = line
    return list(merged.values())


def applied_rates(rates: list[TaxRate]) -> list[dict[str, Any]]:
    """What an invoice's ``tax_rates`` holds: the rates it applied to its own lines."""
    return [
        {"key": t.key, "name": t.name, "rate": format(t.rate.normalize(), "f"), "inclusive": t.inclusive} for t in rates
    ]


def rates_of_document(document: dict[str, Any]) -> list[TaxRate] | None:
    """The rates a stored invoice applied to its own lines; None when it cannot tell.

    Read from ``tax_rates``; an invoice rated before that field existed taxed every line at
    one set of rates, which its ``tax_lines`` name, unless its subtotal was zero (taxed
    nothing whatever the rates)."""
    try:
        if "tax_rates" in document:
            entries = document["tax_rates"]
        elif Decimal(document.get("subtotal", "0")) != 0:
            entries = document.get("tax_lines", [])
        else:
            return None
        return [
            TaxRate(key=e["key"], name=e["name"], rate=Decimal(e["rate"]), inclusive=bool(e["inclusive"]))
            for e in entries
        ]
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError):
        # Not a document this code wrote (edited by hand, or damaged): its rates are not known,
        # so its period's adjustments are taxed at today's, and the rating run goes on.
        return None


def added_tax(lines: list[dict[str, Any]]) -> Decimal:
    """What the tax adds to the invoice: its exclusive lines."""
    return sum((Decimal(line["amount"]) for line in lines if not line["inclusive"]), ZERO)
