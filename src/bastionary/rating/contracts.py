"""The billing topics' contracts as JSON Schemas, generated from the pydantic models.

Inputs are the models the parsers validate with; outputs (what the rater and the credit note
desk publish) are described by the models below, which the tests check the published events
against. ``python -m bastionary.rating.contracts`` writes ``schemas/billing/``; a test keeps
the committed files equal to what this module generates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from bastionary.rating.credit_notes import (
    CREDIT_NOTE_ISSUED,
    CREDIT_NOTE_REJECTED,
    CREDIT_NOTE_REQUESTED,
    CreditNoteRequest,
)
from bastionary.rating.customers import CUSTOMER_UPSERTED, CustomerData
from bastionary.rating.events import (
    CREDIT_TYPES,
    MAX_FRACTION_DIGITS,
    MAX_INTEGER_DIGITS,
    SUBSCRIPTION_TYPES,
    CreditGrantData,
    SubscriptionData,
)
from bastionary.rating.spend import LIMIT_REACHED, LIMIT_RESTORED, THRESHOLD_CROSSED

DecimalText = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="an exact decimal number")]
Time = Annotated[str, Field(description="ISO 8601 with an offset")]
InvoiceKind = Literal["period", "advance", "progressive", "final_adjustment"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceSpan(_Out):
    start: Time
    end: Time = Field(description="exclusive")
    quantity: DecimalText = Field(description="a fee's share of the period, or the span's usage")
    amount: DecimalText


class TierCharge(_Out):
    """A tier of a ``graduated`` or ``volume`` price that priced units (rating/pricing.py)."""

    tier: int = Field(ge=1)
    up_to: DecimalText | None = Field(description="the tier's inclusive upper bound; null for the last")
    units: DecimalText
    unit_amount: DecimalText = Field(description="the price of a unit, exact")
    flat_amount: DecimalText
    amount: DecimalText


class PackageCount(_Out):
    """A ``package`` price's packages started."""

    packages: DecimalText


class PercentageTerms(_Out):
    """A ``percentage`` price's terms and what they applied to."""

    rate: DecimalText
    value: DecimalText
    events: int
    fixed_amount: DecimalText = Field(description="per event")
    min_amount: DecimalText | None
    max_amount: DecimalText | None


class InvoiceLine(_Out):
    price_key: str
    meter: str | None
    description: str
    quantity: DecimalText
    amount: DecimalText
    tiers: list[TierCharge | PackageCount]
    adjusts_period_start: Time | None = None
    unit_price: DecimalText | None = None
    percentage: PercentageTerms | None = None
    billing_timing: Literal["advance"] | None = Field(
        None, description="a fee billed in advance, for the period service_period_start .. service_period_end"
    )
    service_period_start: Time | None = None
    service_period_end: Time | None = None
    already_billed: bool | None = Field(
        None, description="deducts what earlier (progressive) invoices billed of this period's usage"
    )
    service_spans: list[ServiceSpan] | None = Field(
        None,
        description=(
            "the spans of the period the line bills (a prorated fee's plan segment, a usage price's"
            " segment), each with its share or usage and amount; on a line adjusting or giving back"
            " what was billed, the spans it replaces, negated, then those it bills in their place"
        ),
    )


class TaxLine(_Out):
    key: str
    name: str
    rate: DecimalText
    inclusive: bool
    taxable: DecimalText
    amount: DecimalText


class AppliedTaxRate(_Out):
    key: str
    name: str
    rate: DecimalText
    inclusive: bool


class Allocation(_Out):
    grant_id: str
    amount: DecimalText
    funding: Literal["promotional", "paid", "carried"] | None = None


class Movement(_Out):
    grant_id: str
    amount: DecimalText
    currency: str | None = Field(
        default=None,
        description="the grant's currency, which may differ from the invoice's; absent on invoices issued before 2026-12-07",
    )


class Topup(_Out):
    currency: str
    threshold: DecimalText
    amount: DecimalText
    balance: DecimalText


class InvoiceDocument(_Out):
    """``bastionary.invoice.finalized.v1`` on ``billing.invoices`` (README, Rating)."""

    invoice_id: str
    customer_id: str
    subscription_id: str
    plan: str
    currency: str
    kind: InvoiceKind
    period_start: Time
    period_end: Time
    issued_at: Time
    due_at: Time
    lines: list[InvoiceLine]
    subtotal: DecimalText
    credits_applied: DecimalText
    credit_allocations: list[Allocation]
    total: DecimalText
    status: Literal["finalized"]
    credits_expired: list[Movement] = []
    carried_forward: DecimalText = "0"
    topup_requested: list[Topup] = []
    tax_lines: list[TaxLine] = []
    tax: DecimalText = "0"
    tax_rates: list[AppliedTaxRate] = Field(
        [],
        description="the rates this invoice's own lines were taxed at; a later line adjusting its period is taxed"
        " at them (absent on invoices rated before 2026-12-04)",
    )
    issuer: dict[str, Any] = {}
    bill_to: dict[str, Any] = {}
    plans: list[str] = []
    backfill: bool = Field(
        False, description="issued for a period that ended before its subscription was received (README, Backfill)"
    )


class CreditMovement(_Out):
    """``bastionary.credit.applied.v1`` / ``.expired.v1`` / ``.carried.v1`` on ``billing.credits``."""

    grant_id: str
    customer_id: str
    invoice_id: str
    amount: DecimalText
    currency: str
    funding: Literal["promotional", "paid", "carried"] | None = None


class TopupRequest(Topup):
    """``bastionary.credit.topup_requested.v1`` on ``billing.credits``: the payment system's cue."""

    customer_id: str
    invoice_id: str


class CreditLimitEvent(_Out):
    """``bastionary.credit_limit.threshold_crossed.v1`` / ``.reached.v1`` / ``.restored.v1``
    on ``billing.credits`` (README, Credit limits)."""

    customer_id: str
    currency: str
    limit: DecimalText
    exposure: DecimalText
    unpaid: DecimalText
    running_charge: DecimalText
    period_start: Time | None
    at: Time
    share: DecimalText
    sequence: int | None = None


class CreditNoteLine(_Out):
    description: str
    amount: DecimalText


class CreditNoteDecision(_Out):
    """``bastionary.credit_note.issued.v1`` / ``.rejected.v1`` on ``billing.invoices``."""

    credit_note_id: str
    requested_id: str
    request_event_id: str
    invoice_id: str
    customer_id: str
    reason: str
    requested_at: Time
    issued_at: Time
    status: Literal["issued", "rejected"]
    rejection: str | None = None
    currency: str | None = None
    amount: DecimalText | None = None
    lines: list[CreditNoteLine] = []
    reduces_amount_due: DecimalText | None = None
    refunded: DecimalText | None = None
    credited_to_balance: DecimalText | None = None
    voids_invoice: bool = False
    tax_lines: list[TaxLine] = Field(
        default=[],
        description=(
            "on an issued note: the part of each of the invoice's tax lines it gives back (same key, name, rate"
            " and kind), from running totals so the notes of a fully credited invoice give back exactly its tax;"
            " absent on notes issued before 2026-12-07"
        ),
    )


# The decimal strings an input's amount or share takes, as the parsers read them (a plain
# decimal, an optional "+", trailing zeros not counted as decimals), within what an amount
# stores (events.amount_problem: at most 18 integer and 9 decimal digits). Stricter than the
# parsers on spelling only: an exponent, surrounding spaces or "_" are left out.
_AMOUNT = (
    rf"(?:0*[0-9]{{1,{MAX_INTEGER_DIGITS}}}(?:\.[0-9]{{0,{MAX_FRACTION_DIGITS}}}0*)?"
    rf"|\.[0-9]{{1,{MAX_FRACTION_DIGITS}}}0*)"
)
NON_NEGATIVE_AMOUNT = rf"^\+?{_AMOUNT}$"
POSITIVE_AMOUNT = rf"^\+?(?=[0-9.]*[1-9]){_AMOUNT}$"
SHARE = r"^\+?0*\.[0-9]*[1-9][0-9]*$"  # above 0, below 1: any precision
AMOUNT_LIMIT = 10**MAX_INTEGER_DIGITS
_AMOUNT_SAYS = f"below 10^{MAX_INTEGER_DIGITS}, with at most its currency's decimals ({MAX_FRACTION_DIGITS} at most)"
# A decimal's bounds, as JSON Schema keywords -> its number form, string form, and description.
_DECIMAL_FORMS: dict[frozenset[tuple[str, float]], tuple[dict[str, Any], dict[str, Any], str]] = {
    frozenset({("exclusiveMinimum", 0)}): (
        {"exclusiveMinimum": 0, "exclusiveMaximum": AMOUNT_LIMIT},
        {"pattern": POSITIVE_AMOUNT},
        f"above 0, {_AMOUNT_SAYS}",
    ),
    frozenset({("minimum", 0)}): (
        {"minimum": 0, "exclusiveMaximum": AMOUNT_LIMIT},
        {"pattern": NON_NEGATIVE_AMOUNT},
        f"0 or more, {_AMOUNT_SAYS}",
    ),
    frozenset({("exclusiveMinimum", 0), ("exclusiveMaximum", 1)}): (
        {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"pattern": SHARE},
        "above 0 and below 1",
    ),
}
_LEAKED_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _bounded_decimals(node: Any) -> Any:
    """``node`` with each decimal (a number or a decimal string) bounded in both forms.

    Pydantic bounds only the number form, and writes the bound of a decimal behind a validator
    (``Amount``) as ``gt``/``ge``, which JSON Schema ignores: the published schemas let ``-5``,
    ``"-5.00"`` and ``"ten"`` through where the parsers dead-letter them (invalid_data).
    """
    if isinstance(node, list):
        return [_bounded_decimals(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _bounded_decimals(value) for key, value in node.items()}
    forms = node.get("anyOf")
    if not (isinstance(forms, list) and [form.get("type") for form in forms] == ["number", "string"]):
        return node
    bounds = {key: value for key, value in forms[0].items() if key != "type"}
    bounds |= {_LEAKED_BOUNDS[key]: node.pop(key) for key in list(node) if key in _LEAKED_BOUNDS}
    known = _DECIMAL_FORMS.get(frozenset(bounds.items()))
    if known is None:
        # A new kind of decimal: give its forms above rather than publish it unbounded.
        raise ValueError(f"no JSON Schema forms for a decimal bounded {bounds}: add them to _DECIMAL_FORMS")
    number, text, says = known
    node["anyOf"] = [{"type": "number", **number}, {"type": "string", **text}]
    node.setdefault("description", f'a number or a decimal string ("19.99"), {says}')
    return node


def _types(types: dict[str, str]) -> list[str]:
    return list(types)


# Each billing event type and the model of its ``data``.
CONTRACTS: dict[str, tuple[list[str], type[BaseModel], str]] = {
    "subscription": (_types(SUBSCRIPTION_TYPES), SubscriptionData, "billing.subscriptions"),
    "credit-grant": (_types(CREDIT_TYPES), CreditGrantData, "billing.credit-grants"),
    "customer": ([CUSTOMER_UPSERTED], CustomerData, "billing.customers"),
    "credit-note-request": ([CREDIT_NOTE_REQUESTED], CreditNoteRequest, "billing.credit-notes"),
    "invoice": (["bastionary.invoice.finalized.v1"], InvoiceDocument, "billing.invoices"),
    "credit-note-decision": ([CREDIT_NOTE_ISSUED, CREDIT_NOTE_REJECTED], CreditNoteDecision, "billing.invoices"),
    "credit-movement": (
        [f"bastionary.credit.{kind}.v1" for kind in ("applied", "expired", "carried")],
        CreditMovement,
        "billing.credits",
    ),
    "topup-request": (["bastionary.credit.topup_requested.v1"], TopupRequest, "billing.credits"),
    "credit-limit": ([THRESHOLD_CROSSED, LIMIT_REACHED, LIMIT_RESTORED], CreditLimitEvent, "billing.credits"),
}


def schema_for(name: str) -> dict[str, Any]:
    """The CloudEvent (structured JSON) carrying one of the contract's types."""
    types, model, topic = CONTRACTS[name]
    data = _bounded_decimals(model.model_json_schema(mode="validation"))
    defs = data.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Bastionary {name.replace('-', ' ')} event",
        "description": f"On {topic}. Generated from {model.__module__}.{model.__name__}; do not edit.",
        "type": "object",
        "required": ["specversion", "id", "source", "type", "time", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "minLength": 1},
            "type": {"enum": types},
            "subject": {"type": "string"},
            "time": {"type": "string"},
            "datacontenttype": {"type": "string"},
            "data": data,
        },
        "$defs": defs,
    }


def schema_files() -> dict[str, bytes]:
    return {
        f"{name}.schema.json": orjson.dumps(schema_for(name), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        for name in CONTRACTS
    }


def main(directory: str) -> None:
    # Through the package, not ``__main__``: the models' names in the files are their modules'.
    from bastionary.rating import contracts

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for name, content in contracts.schema_files().items():
        (target / name).write_bytes(content)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1] if len(sys.argv) > 1 else "schemas/billing")
