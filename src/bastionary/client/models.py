"""The API's answers as typed models. Each one is checked against ``schemas/openapi.yaml``
(tests/unit/test_client_models.py): the same fields, the same required ones.

Amounts, quantities and meter values are exact decimal strings on the wire and
:class:`~decimal.Decimal` here; times are aware datetimes in UTC.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    # A newer server may add fields: an older client keeps working and ignores them.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Accepted(_Model):
    """``POST /v1/events``: the ids the broker acknowledged."""

    accepted: int
    ids: list[str]


class RejectedEvent(_Model):
    index: int
    id: str | None
    code: str
    message: str


class UsageRow(_Model):
    customer_id: str
    window_start: datetime
    window_end: datetime
    group: dict[str, str]
    value: Decimal


class MeterQuery(_Model):
    meter: str
    customer: str | None
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    window: str | None
    data: list[UsageRow]


class InvoiceSummary(_Model):
    invoice_id: str
    customer_id: str
    subscription_id: str
    plan: str
    kind: str
    period_start: datetime
    period_end: datetime
    due_at: datetime | None = None  # servers before it existed lack it
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    status: str


class ServiceSpan(_Model):
    start: datetime
    end: datetime  # exclusive
    quantity: Decimal  # a fee's share of the period, or the span's usage
    amount: Decimal


class InvoiceLine(_Model):
    price_key: str
    meter: str | None
    description: str
    quantity: Decimal
    amount: Decimal
    tiers: list[dict[str, Any]]
    adjusts_period_start: datetime | None = None
    unit_price: Decimal | None = None
    percentage: dict[str, Any] | None = None
    billing_timing: str | None = None  # "advance": a fee for service_period_start .. service_period_end
    service_period_start: datetime | None = None
    service_period_end: datetime | None = None
    already_billed: bool | None = None  # deducts what progressive invoices billed of the period
    # The spans of the period the line bills; an adjustment's: those it replaces, negated, then its own.
    service_spans: list[ServiceSpan] | None = None


class Invoice(_Model):
    """An invoice document as the rater issued it (or, with ``status: preview``, would)."""

    invoice_id: str
    customer_id: str
    subscription_id: str
    plan: str
    currency: str
    kind: str
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    due_at: datetime
    lines: list[InvoiceLine]
    subtotal: Decimal
    credits_applied: Decimal
    credit_allocations: list[dict[str, str]]
    total: Decimal
    status: str
    credits_expired: list[dict[str, str]] = []
    carried_forward: Decimal = Decimal(0)  # a negative subtotal's difference, tax included, drawn by later invoices
    topup_requested: list[dict[str, str]] = []  # the auto top-up this invoice's draws set off
    tax_lines: list[dict[str, Any]] = []  # one per rate: key, name, rate, inclusive, taxable, amount
    tax: Decimal = Decimal(0)
    tax_rates: list[dict[str, Any]] = []  # the rates of its own lines: key, name, rate, inclusive
    issuer: dict[str, Any] = {}
    bill_to: dict[str, Any] = {}
    plans: list[str] = []  # every plan of the period, in order; ``plan`` is the one at its end
    backfill: bool = False  # the period ended before the subscription was received


class UpcomingInvoices(_Model):
    customer_id: str
    preview: bool
    invoices: list[Invoice]


class CurrencyBalance(_Model):
    currency: str
    promotional: Decimal
    paid: Decimal
    carried: Decimal
    available: Decimal  # promotional + paid + carried


class GrantBalance(_Model):
    grant_id: str
    funding: str  # promotional | paid | carried: the order invoices draw in
    currency: str
    granted: Decimal
    remaining: Decimal
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    status: str


class CreditBalance(_Model):
    customer_id: str
    at: datetime
    balances: list[CurrencyBalance]
    grants: list[GrantBalance]


class LedgerMovement(_Model):
    movement_id: str
    kind: str
    grant_id: str
    amount: Decimal
    currency: str
    effective_at: datetime
    expires_at: datetime | None
    invoice_id: str
    recorded_at: datetime
    price_paid: Decimal | None  # a purchase's
    payment_reference: str  # a purchase's


class CreditLedger(_Model):
    customer_id: str
    movements: list[LedgerMovement]


class PlanSpan(_Model):
    plan: str
    from_: datetime = Field(alias="from")
    until: datetime | None


class SubscriptionState(_Model):
    subscription_id: str
    billing_anchor: datetime
    canceled_at: datetime | None
    plans: list[PlanSpan]


class Subscriptions(_Model):
    customer_id: str
    subscriptions: list[SubscriptionState]


class Decision(_Model):
    """An entitlement check."""

    feature: str
    has_access: bool
    type: str | None  # null with no subscription, or a feature neither the plan nor an override grants
    usage: Decimal | None = None
    limit: Decimal | None = None
    balance: Decimal | None = None
    soft: bool | None = None
    reset_at: datetime | None = None
    reason: str | None = None
    config: Any = None


class Address(_Model):
    line1: str = ""
    line2: str = ""
    city: str = ""
    postal_code: str = ""
    region: str = ""
    country: str = ""


class CreditNoteLine(_Model):
    description: str
    amount: Decimal


class CreditNote(_Model):
    """A credit note request's decision: issued (with where the money went) or rejected."""

    credit_note_id: str
    requested_id: str
    request_event_id: str
    invoice_id: str
    customer_id: str
    reason: str
    requested_at: datetime
    issued_at: datetime
    status: str  # issued | rejected
    rejection: str | None = None
    currency: str | None = None
    amount: Decimal | None = None
    lines: list[CreditNoteLine] = []
    reduces_amount_due: Decimal | None = None
    refunded: Decimal | None = None
    credited_to_balance: Decimal | None = None
    voids_invoice: bool = False
    tax_lines: list[dict[str, Any]] = []  # the tax it gives back, one per invoice tax line (as Invoice.tax_lines)


class CreditNoteSummary(_Model):
    credit_note_id: str
    invoice_id: str
    customer_id: str
    status: str
    currency: str
    amount: Decimal
    reduces_amount_due: Decimal
    refunded: Decimal
    credited_to_balance: Decimal
    issued_at: datetime


class CreditNoteList(_Model):
    credit_notes: list[CreditNoteSummary]


class CreditLimit(_Model):
    currency: str
    amount: Decimal
    alert_at: list[Decimal] = []


class AutoTopup(_Model):
    currency: str
    threshold: Decimal
    amount: Decimal


class Customer(_Model):
    """A customer's record: who invoices are addressed to."""

    customer_id: str
    name: str
    email: str
    address: Address
    tax_id: str
    tax_exempt: bool
    auto_topup: list[AutoTopup] = []
    credit_limit: CreditLimit | None = None
    updated_at: datetime


class WriteAccepted(_Model):
    """A billing input the broker acknowledged: its event id and type."""

    accepted: bool
    id: str
    type: str | None = None
