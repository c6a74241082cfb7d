"""The dunning input contract: payment and response CloudEvents, and the invoices and issued
credit notes read from ``billing.invoices``.

``billing.payments`` (keyed by customer id) and ``dunning.responses`` carry structured-JSON
CloudEvents. What fails here goes to a dead-letter topic with the reason; what passes is
checked against the invoice it names by the worker (unknown invoice, wrong currency, another
customer's invoice, a promise reaching past the invoice's policy's ``max_promise``).

Like the billing parsers (see :mod:`bastionary.rating.events`), these are total and accept
only storable values: any bytes give a parsed event or :class:`InvalidBillingEvent`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, Field, StrictStr, model_validator

from bastionary.dunning.ports import PaymentRow, ReceivableRow, TrailRow
from bastionary.rating.credit_notes import CREDIT_NOTE_ISSUED
from bastionary.rating.events import (
    LATEST,
    MAX_CHANNEL_LENGTH,
    Amount,
    BillingEvent,
    BillingTime,
    Id,
    InvalidBillingEvent,
    OptionalId,
    Text,
    _Data,
    check_currency,
    parse_data,
    parse_envelope,
    preview,
    time_in_range,
)
from bastionary.settings import format_iso_duration

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
    invoice_id: Id
    customer_id: Id
    plan: OptionalId = ""
    currency: StrictStr
    total: Amount = Field(ge=0)
    issued_at: BillingTime
    due_at: BillingTime
    period_start: BillingTime
    period_end: BillingTime
    backfill: bool = False  # issued by a backfill: not chased unless BASTIONARY_DUNNING_BACKFILL

    @model_validator(mode="after")
    def _money(self) -> InvoiceData:
        check_currency(self.currency, self.total)
        return self


class PaymentData(_Data):
    invoice_id: Id
    payment_id: Id | None = None
    customer_id: OptionalId | None = None
    amount: Amount | None = None
    currency: StrictStr | None = None
    paid_at: BillingTime | None = None
    reason: Text = ""

    @model_validator(mode="after")
    def _money(self) -> PaymentData:
        if self.amount is not None and self.amount <= 0:
            raise ValueError(f"amount must be positive, got {preview(str(self.amount), 40)}")
        check_currency(self.currency, self.amount)
        return self


class ResponseData(_Data):
    invoice_id: Id
    notice_id: OptionalId | None = None
    customer_id: OptionalId | None = None
    channel: Annotated[StrictStr, Field(max_length=MAX_CHANNEL_LENGTH)] = ""
    # Not bounded here: parse_response tells a promise too far (promise_too_far) from a bad one.
    promised_by: AwareDatetime | None = None
    reason: Text = ""


class CreditNoteIssuedData(_Data):
    """What dunning keeps of a ``bastionary.credit_note.issued.v1`` (the rater's own event)."""

    credit_note_id: Id
    invoice_id: Id
    customer_id: Id
    currency: StrictStr
    amount: Amount = Field(gt=0)
    # The parts of ``amount``: None in a note published before dunning kept them (then none
    # of it counts as given back, as dunning reckoned before).
    reduces_amount_due: Amount | None = Field(default=None, ge=0)
    refunded: Amount | None = Field(default=None, ge=0)
    voids_invoice: bool = False
    issued_at: BillingTime

    @model_validator(mode="after")
    def _money(self) -> CreditNoteIssuedData:
        check_currency(self.currency, self.amount)
        return self


def parse_credit_note_issued(value: bytes) -> CreditNoteIssuedData | None:
    """An issued credit note on ``billing.invoices``; None for the other types there."""
    event = parse_envelope(value)
    if event.type != CREDIT_NOTE_ISSUED:
        return None
    return parse_data(CreditNoteIssuedData, event)


def credit_note_rows(event_id: str, data: CreditNoteIssuedData, received: datetime) -> list[PaymentRow]:
    """A credit note lowers what the invoice asks by its whole amount (``credited``); what it
    gave back (``given_back``: to the balance or refunded) and the part of that it refunded
    (``note_refunded``) are kept too, so what was paid and not yet given back is reckoned as
    the credit note decision reckons it (a chargeback after a note's give-back is owed again).
    A void also voids the invoice. Keyed by the credit note id: a redelivery counts once."""
    rows = [
        PaymentRow(
            event_id,
            "credited",
            data.credit_note_id,
            data.invoice_id,
            data.customer_id,
            data.amount,
            data.currency,
            data.issued_at,
            "credit note",
            received,
        )
    ]
    if data.reduces_amount_due is not None:
        given_back = data.amount - data.reduces_amount_due
        if given_back > 0:
            rows.append(rows[0]._replace(kind="given_back", amount=given_back))
    if data.refunded is not None and data.refunded > 0:
        rows.append(rows[0]._replace(kind="note_refunded", amount=data.refunded))
    if data.voids_invoice:
        rows.append(rows[0]._replace(kind="voided", amount=Decimal(0), reason="voided by a credit note"))
    return rows


def parse_invoice(value: bytes) -> InvoiceData | None:
    """The receivable of an invoice.finalized event; None for the other types on the topic.

    The event's ``time`` is not checked against the record's timestamp: these are the rater's
    own events, republished as stored, and only their ``data`` is kept."""
    event = parse_envelope(value)
    if event.type != INVOICE_FINALIZED:
        return None
    return parse_data(InvoiceData, event)


def parse_payment(value: bytes, *, latest_time: datetime | None = None) -> tuple[BillingEvent, str, PaymentData]:
    event = parse_envelope(value, latest_time)
    kind = PAYMENT_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a payment event type: {preview(event.type)}")
    data = parse_data(PaymentData, event)
    if kind in ("succeeded", "refunded", "failed") and data.payment_id is None:
        raise InvalidBillingEvent("invalid_data", f"{kind} needs payment_id")
    if kind in ("succeeded", "refunded") and (data.amount is None or data.currency is None):
        raise InvalidBillingEvent("invalid_data", f"{kind} needs amount and currency")
    return event, kind, data


def parse_response(value: bytes, *, latest_time: datetime | None = None) -> tuple[BillingEvent, str, ResponseData]:
    event = parse_envelope(value, latest_time)
    kind = RESPONSE_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a dunning response type: {preview(event.type)}")
    data = parse_data(ResponseData, event)
    if kind == "promised":
        if data.promised_by is None:
            raise InvalidBillingEvent("invalid_data", "promised needs promised_by")
        if data.promised_by <= event.time:
            raise InvalidBillingEvent("invalid_data", "promised_by must be after the event time")
    if data.promised_by is not None and not time_in_range(data.promised_by):
        if kind == "promised":  # later than LATEST: too far whatever the policy
            raise InvalidBillingEvent(
                "promise_too_far",
                f"promised_by {data.promised_by.isoformat()} is not before {LATEST.isoformat()}, the end of"
                " the dates Bastionary stores",
            )
        raise InvalidBillingEvent("invalid_data", "promised_by: must fall within 1970-01-01 .. 2105-12-31 UTC")
    return event, kind, data


def check_against_invoice(
    kind: str, data: PaymentData, invoice_currency: str | None, invoice_customer: str | None = None
) -> None:
    """Raise the dead-letter reason for a payment that does not fit its invoice."""
    if invoice_currency is None:
        raise InvalidBillingEvent("unknown_invoice", f"no invoice {data.invoice_id!r}")
    check_payment_owner(data, invoice_customer)
    if data.currency is not None and data.currency != invoice_currency:
        raise InvalidBillingEvent(
            "wrong_currency", f"payment in {data.currency} for invoice {data.invoice_id} in {invoice_currency}"
        )


def check_payment_owner(data: PaymentData, invoice_customer: str | None) -> None:
    """Raise ``customer_mismatch`` for a payment naming another customer than its invoice's
    (``invoice_customer``, None while unknown). Payments count per invoice: without this, a key
    scoped to one customer could mark another's invoice paid, or refunded, by naming itself."""
    if data.customer_id and invoice_customer and data.customer_id != invoice_customer:
        raise InvalidBillingEvent(
            "customer_mismatch", f"invoice {data.invoice_id!r} is not customer {data.customer_id!r}'s"
        )


def check_credit_note_against_invoice(data: CreditNoteIssuedData, invoice: tuple[str, str] | None) -> None:
    """Raise the dead-letter reason for an issued credit note that does not fit its invoice
    (``invoice``: its (currency, customer), None while unknown), checked as a payment is.

    A note's amount is counted off the invoice it names, in the invoice's currency: without
    this, a note in EUR took 90 EUR off a USD invoice as 90 USD, and one naming another
    customer lowered (or voided) an invoice that is not its own. The rater's own notes always
    fit; another producer's may not. A note read before its invoice is dead-lettered, whole, as
    ``unknown_invoice`` rather than counted unchecked: replayed once the invoice is read, it is
    stored then."""
    if invoice is None:
        raise InvalidBillingEvent(
            "unknown_invoice",
            f"no invoice {data.invoice_id!r} for credit note {data.credit_note_id!r}:"
            " replay the note once its invoice is read",
        )
    invoice_currency, invoice_customer = invoice
    # The owner first, as for payments: a wrong_currency message names the invoice's currency,
    # which is no business of another customer's.
    if data.customer_id != invoice_customer:
        raise InvalidBillingEvent(
            "customer_mismatch", f"invoice {data.invoice_id!r} is not customer {data.customer_id!r}'s"
        )
    if data.currency != invoice_currency:
        raise InvalidBillingEvent(
            "wrong_currency",
            f"credit note {data.credit_note_id!r} in {data.currency} for invoice {data.invoice_id} in {invoice_currency}",
        )


def check_promise(event: BillingEvent, kind: str, data: ResponseData, max_promise: timedelta) -> None:
    """Raise the dead-letter reason for a promise reaching past ``max_promise`` after its ``time``.

    A promise pauses dunning until ``promised_by``: unbounded, ``9999-12-31`` would stop it for
    good. Exactly ``max_promise`` after the response is still accepted.
    """
    if kind != "promised" or data.promised_by is None:
        return
    try:
        limit = event.time + max_promise
    except OverflowError:
        return  # the limit is past year 9999: no datetime can exceed it
    if data.promised_by > limit:
        raise InvalidBillingEvent(
            "promise_too_far",
            f"promised_by {data.promised_by.isoformat()} is more than max_promise"
            f" {format_iso_duration(max_promise)} after the response's time {event.time.isoformat()}"
            f" (at most {limit.isoformat()})",
        )


def payment_moment(event: BillingEvent, data: PaymentData) -> datetime:
    return data.paid_at or event.time


def receivable_row(data: InvoiceData, received: datetime) -> ReceivableRow:
    """The ``receivables`` row of a finalized invoice."""
    return ReceivableRow(
        data.invoice_id,
        data.customer_id,
        data.plan,
        data.currency,
        data.total,
        data.issued_at,
        data.due_at,
        data.period_start,
        data.period_end,
        received,
        int(data.backfill),
    )


def payment_row(
    envelope: BillingEvent, kind: str, data: PaymentData, customer: str, invoice_currency: str, received: datetime
) -> PaymentRow:
    """The ``payments`` row of a payment that fits its invoice."""
    return PaymentRow(
        envelope.id,
        kind,
        data.payment_id or envelope.id,
        data.invoice_id,
        customer,
        data.amount or Decimal(0),
        data.currency or invoice_currency,
        payment_moment(envelope, data),
        data.reason,
        received,
    )


def response_row(envelope: BillingEvent, kind: str, data: ResponseData, customer: str) -> TrailRow:
    """The ``dunning_events`` response row of a response to an invoice of ``customer``."""
    return TrailRow(
        envelope.id,
        data.invoice_id,
        customer,
        "response",
        envelope.time,
        action=kind,
        channel=data.channel,
        detail=data.reason or (data.notice_id or ""),
        until=data.promised_by,
    )
