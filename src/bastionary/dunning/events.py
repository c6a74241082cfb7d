"""The dunning input contract: payment and response CloudEvents.

``billing.payments`` (keyed by customer id) and ``dunning.responses`` carry structured-JSON
CloudEvents. What fails here goes to a dead-letter topic with the reason; what passes is
checked against the invoice it names by the worker (unknown invoice, wrong currency).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, Field, StrictStr, model_validator

from bastionary.rating.events import BillingEvent, InvalidBillingEvent, _Data, parse_data, parse_envelope
from bastionary.rating.money import MINOR_UNITS

PAYMENT_TYPES = {
    "bastionary.payment.succeeded.v1": "succeeded",
    "bastionary.payment.failed.v1": "failed",
    "bastionary.payment.refunded.v1": "refunded",
    "bastionary.invoice.voided.v1": "voided",
}
RESPONSE_TYPES = {
    "bastionary.dunning.delivered.v1": "delivered",
    "bastionary.dunning.bounced.v1": "bounced",
    "bastionary.dunning.opened.v1": "opened",
    "bastionary.dunning.clicked.v1": "clicked",
    "bastionary.dunning.promised.v1": "promised",
    "bastionary.dunning.disputed.v1": "disputed",
    "bastionary.dunning.dispute_resolved.v1": "dispute_resolved",
}


INVOICE_FINALIZED = "bastionary.invoice.finalized.v1"


class InvoiceData(_Data):
    invoice_id: StrictStr = Field(min_length=1)
    customer_id: StrictStr = Field(min_length=1)
    plan: StrictStr = ""
    currency: StrictStr
    total: Decimal = Field(ge=0, allow_inf_nan=False)
    issued_at: AwareDatetime
    due_at: AwareDatetime
    period_start: AwareDatetime
    period_end: AwareDatetime


class PaymentData(_Data):
    invoice_id: StrictStr = Field(min_length=1)
    payment_id: StrictStr | None = Field(default=None, min_length=1)
    customer_id: StrictStr | None = None
    amount: Decimal | None = Field(default=None, allow_inf_nan=False)
    currency: StrictStr | None = None
    paid_at: AwareDatetime | None = None
    reason: StrictStr = ""

    @model_validator(mode="after")
    def _money(self) -> "PaymentData":
        if self.amount is not None and self.amount <= 0:
            raise ValueError(f"amount must be positive, got {self.amount}")
        if self.currency is not None and self.currency not in MINOR_UNITS:
            raise ValueError(f"unknown currency {self.currency!r}")
        return self


class ResponseData(_Data):
    invoice_id: StrictStr = Field(min_length=1)
    notice_id: StrictStr | None = None
    customer_id: StrictStr | None = None
    channel: StrictStr = ""
    promised_by: AwareDatetime | None = None
    reason: StrictStr = ""


def parse_invoice(value: bytes) -> InvoiceData | None:
    """The receivable of an invoice.finalized event; None for the other types on the topic."""
    event = parse_envelope(value)
    if event.type != INVOICE_FINALIZED:
        return None
    return parse_data(InvoiceData, event)


def parse_payment(value: bytes) -> tuple[BillingEvent, str, PaymentData]:
    event = parse_envelope(value)
    kind = PAYMENT_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a payment event type: {event.type}")
    data = parse_data(PaymentData, event)
    if kind in ("succeeded", "refunded", "failed") and data.payment_id is None:
        raise InvalidBillingEvent("invalid_data", f"{kind} needs payment_id")
    if kind in ("succeeded", "refunded") and (data.amount is None or data.currency is None):
        raise InvalidBillingEvent("invalid_data", f"{kind} needs amount and currency")
    return event, kind, data


def parse_response(value: bytes) -> tuple[BillingEvent, str, ResponseData]:
    event = parse_envelope(value)
    kind = RESPONSE_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a dunning response type: {event.type}")
    data = parse_data(ResponseData, event)
    if kind == "promised" and data.promised_by is None:
        raise InvalidBillingEvent("invalid_data", "promised needs promised_by")
    if kind == "promised" and data.promised_by <= event.time:
        raise InvalidBillingEvent("invalid_data", "promised_by must be after the event time")
    return event, kind, data


def check_against_invoice(kind: str, data: PaymentData, invoice_currency: str | None) -> None:
    """Raise the dead-letter reason for a payment that does not fit its invoice."""
    if invoice_currency is None:
        raise InvalidBillingEvent("unknown_invoice", f"no invoice {data.invoice_id!r}")
    if data.currency is not None and data.currency != invoice_currency:
        raise InvalidBillingEvent(
            "wrong_currency", f"payment in {data.currency} for invoice {data.invoice_id} in {invoice_currency}"
        )


def payment_moment(event: BillingEvent, data: PaymentData) -> datetime:
    return data.paid_at or event.time
