"""Credit notes: a request to credit part or all of an issued invoice, and the decision.

A ``bastionary.credit_note.requested.v1`` on ``billing.credit-notes`` (keyed by customer id)
names the invoice and either an ``amount``, ``lines`` (the amount is their sum), nothing (all
that is still creditable) or ``void: true`` (the whole invoice, which must be unpaid and
uncredited). The worker that rates the customer decides each request in the order received,
against the invoice as stored and what was paid and credited so far (:func:`decide`):

- the amount first reduces what is still due (``reduces_amount_due``);
- the rest is given back: first the money that paid the invoice and was not yet given back
  (at most its total: money paid beyond it is an overpayment, not the note's), to the customer's
  credit balance (``refund_to: balance``, the default: a ``credit_note`` row of
  ``credit_ledger``, drawn like a carried balance) or as a refund the payment system makes
  (``refund_to: payment``: ``refunded``); then what prepaid credit paid of the invoice, to
  the credit balance whatever ``refund_to`` says (credit is given back as credit, as Lago
  does), so an invoice paid wholly with credit can be credited too.

What can be credited in all is the invoice's subtotal with tax: its ``total`` plus the
credits it drew. An issued note gives back its part of the invoice's tax (``tax_lines``, see
:func:`tax_given_back`). An invoice voided through ``billing.payments`` (``bastionary.invoice.voided.v1``)
is cancelled for good: it takes no void, and notes only for the prepaid credit it drew, to the
balance.

Pure Python: no broker, no database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from bastionary.money import format_money, round_money
from bastionary.rating.amount_due import amount_due, still_paid
from bastionary.rating.events import (
    Amount,
    BillingEvent,
    Id,
    InvalidBillingEvent,
    Text,
    amount_problem,
    parse_data,
    parse_envelope,
    preview,
)

CREDIT_NOTE_REQUESTED = "bastionary.credit_note.requested.v1"
CREDIT_NOTE_ISSUED = "bastionary.credit_note.issued.v1"
CREDIT_NOTE_REJECTED = "bastionary.credit_note.rejected.v1"
# Issued credit note ids are UUIDv5 of (customer, requested id) in this namespace.
CREDIT_NOTE_NAMESPACE = uuid.UUID("5f2b0a3c-8e1d-4c6a-9b7e-2d4f6a8c0e13")
MAX_LINES = 100


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreditNoteLine(_Data):
    description: Annotated[str, Field(min_length=1, max_length=512)]
    amount: Amount = Field(gt=0)


class CreditNoteRequest(_Data):
    credit_note_id: Id  # the requester's id: a repeat of it is the same request
    invoice_id: Id
    customer_id: Id
    amount: Amount | None = Field(default=None, gt=0)
    lines: Annotated[list[CreditNoteLine], Field(max_length=MAX_LINES)] | None = None
    reason: Text = ""
    refund_to: Literal["balance", "payment"] = "balance"
    void: StrictBool = False

    @model_validator(mode="after")
    def _one_amount(self) -> CreditNoteRequest:
        if self.void and (self.amount is not None or self.lines is not None):
            raise ValueError("void credits the whole invoice: give neither amount nor lines")
        if self.amount is not None and self.lines is not None:
            raise ValueError("give amount or lines, not both")
        if self.lines is not None and not self.lines:
            raise ValueError("lines must not be empty")
        return self

    @property
    def requested_amount(self) -> Decimal | None:
        """None: all that is still creditable."""
        if self.lines is not None:
            return sum((line.amount for line in self.lines), Decimal(0))
        return self.amount


def parse_credit_note_request(
    value: bytes, *, latest_time: datetime | None = None
) -> tuple[BillingEvent, CreditNoteRequest]:
    event = parse_envelope(value, latest_time)
    if event.type != CREDIT_NOTE_REQUESTED:
        raise InvalidBillingEvent("unknown_type", f"not a credit note event type: {preview(event.type)}")
    return event, parse_data(CreditNoteRequest, event)


def credit_note_id(customer_id: str, requested_id: str) -> str:
    return str(uuid.uuid5(CREDIT_NOTE_NAMESPACE, f"{customer_id}|{requested_id}"))


@dataclass(frozen=True)
class Standing:
    """An invoice as a credit note finds it."""

    invoice_id: str
    customer_id: str
    currency: str
    total: Decimal
    paid: Decimal  # succeeded minus refunded payments
    credited: Decimal  # by credit notes issued before
    reduced: Decimal  # the part of ``credited`` that reduced what was due
    refunds_reported: Decimal = Decimal(0)  # the refunded payments in ``paid``, whoever asked
    notes_refunded: Decimal = Decimal(0)  # the part of ``credited`` sent back through the payment system
    credits_applied: Decimal = Decimal(0)  # prepaid credit the invoice drew (``total`` is net of it)
    # A ``voided`` payments row: the payment system (``bastionary.invoice.voided.v1``) or a void
    # note cancelled the invoice, so nothing is owed on it, for good.
    voided: bool = False
    # The invoice document's ``tax_lines``: what the notes give back a part of.
    tax_lines: tuple[dict[str, Any], ...] = ()

    def gross(self) -> Decimal:
        """What the notes' amounts are measured against: the subtotal with tax."""
        return self.total + self.credits_applied

    def still_paid(self) -> Decimal:
        """What was paid and not yet given back.

        ``paid`` is already net of every refund the payment system reported; what notes gave
        back is taken off too, except their refunds the payment system has reported (counted
        in ``paid`` already): see :func:`bastionary.rating.amount_due.still_paid`."""
        return still_paid(self.paid, self.credited - self.reduced, self.refunds_reported, self.notes_refunded)

    def amount_due(self) -> Decimal:
        """As dunning reckons it: :func:`bastionary.rating.amount_due.amount_due`."""
        return amount_due(
            self.total,
            self.paid,
            self.credited,
            self.credited - self.reduced,
            self.refunds_reported,
            self.notes_refunded,
        )


@dataclass(frozen=True)
class Decision:
    credit_note_id: str
    status: Literal["issued", "rejected"]
    document: dict[str, Any]
    credited_to_balance: Decimal  # a credit_note ledger row of this amount (issued only)

    @property
    def issued(self) -> bool:
        return self.status == "issued"


def decide(
    event_id: str, requested_at: datetime, request: CreditNoteRequest, standing: Standing | None, issued_at: datetime
) -> Decision:
    """Issue or reject one request. Amounts are exact in the invoice's currency: a request
    with more decimals than the currency has is rejected, never rounded."""
    note_id = credit_note_id(request.customer_id, request.credit_note_id)
    base: dict[str, Any] = {
        "credit_note_id": note_id,
        "requested_id": request.credit_note_id,
        "request_event_id": event_id,
        "invoice_id": request.invoice_id,
        "customer_id": request.customer_id,
        "reason": request.reason,
        "requested_at": requested_at.isoformat(),
        "issued_at": issued_at.isoformat(),
    }

    def reject(why: str) -> Decision:
        return Decision(note_id, "rejected", {**base, "status": "rejected", "rejection": why}, Decimal(0))

    if standing is None:
        return reject(f"no invoice {preview(request.invoice_id)}")
    if standing.customer_id != request.customer_id:
        return reject(f"invoice {preview(request.invoice_id)} is not customer {preview(request.customer_id)}'s")
    if standing.voided and request.void:
        return reject(f"invoice {preview(request.invoice_id)} was voided already")
    currency = standing.currency

    def money(value: Decimal) -> str:
        return format_money(value, currency)  # exact already: this fixes the scale

    creditable = standing.gross() - standing.credited
    if standing.voided:
        # A void cancels the invoice: nothing is owed on it, for good (schemas/README.md, payment
        # events), and its money is the payment system's. The prepaid credit it drew is still the
        # customer's, and a void through billing.payments does not give it back: a note may,
        # to the balance, less what earlier notes gave back of it. What they refunded through
        # the payment system was money, never credit: counting it kept the credit for good (paid
        # 100.00 with 50.00 of credit, a note refunding the 100.00, then the void: 0.00 left).
        credit_given_back = standing.credited - standing.reduced - standing.notes_refunded
        creditable = max(standing.credits_applied - credit_given_back, Decimal(0))
    if request.void:
        if standing.paid > 0 or standing.credited > 0:
            return reject("only an unpaid invoice without credit notes can be voided: issue a credit note instead")
        amount = standing.total + standing.credits_applied  # the credits it drew go back to the balance
    else:
        # Each line is shown as issued, so each must be exact in the currency: a sum can be
        # (10.005 + 9.995 USD) when its lines are not, and rounding them would issue lines that
        # no longer add up to the amount.
        for line in request.lines or []:
            if (problem := amount_problem(line.amount, currency)) is not None:
                return reject(f"line amount {line.amount} {problem}")
        requested = request.requested_amount
        amount = creditable if requested is None else requested
        if (problem := amount_problem(amount, currency)) is not None:
            return reject(f"amount {amount} {problem}")
        if amount > creditable:
            return reject(f"amount {amount} is more than the {money(creditable)} {currency} still creditable")
    if amount <= 0:
        return reject("nothing left to credit")
    # What the invoice, less earlier notes, still asks, less what was paid and not given back.
    # So the rest of the note is at most what was paid and not given back: never more back than
    # paid, whether the payment system reported a note's refund (before 2026-12-04 a note after
    # a reported refund called part of a paid invoice due and kept it) or a refund no note
    # asked for (a chargeback after a note had given money back must not be given back again).
    due = standing.amount_due()
    reduces_due = min(amount, due)
    given_back = amount - reduces_due
    # Money first, then credit. Money back is at most the money that paid what the invoice, less
    # earlier notes (which took money before credit), still asks in money: its total less what
    # they credited. Money paid beyond that is an overpayment, which ``creditable`` does not
    # count and no note gives back; taking it for the invoice's money would hand the credit the
    # invoice drew back as money (before 2026-12-07: total 100.00 with 50.00 of credit, paid
    # 150.00, a full note refunded 150.00 and gave no credit back). The rest is what prepaid
    # credit paid, and goes back to the balance.
    money_owed = max(standing.total - standing.credited, Decimal(0))
    money_paid_toward_total = min(max(standing.still_paid(), Decimal(0)), money_owed)
    money_back = min(given_back, money_paid_toward_total)
    refunded = money_back if request.refund_to == "payment" else Decimal(0)
    to_balance = given_back - refunded
    if standing.voided:  # only the credit it drew: nothing reduces what nobody owes, no money back
        reduces_due, refunded, to_balance = Decimal(0), Decimal(0), amount
    # Without lines, the note's one line is described by its reason, whole: a reason may be
    # longer (2,048 characters) than a requested line's description (512), and building it as
    # a requested line raised out of every desk run.
    lines = [(line.description, line.amount) for line in request.lines or ()] or [(request.reason or "Credit", amount)]

    document = {
        **base,
        "status": "issued",
        "currency": currency,
        "amount": money(amount),
        "lines": [{"description": description, "amount": money(line_amount)} for description, line_amount in lines],
        "reduces_amount_due": money(reduces_due),
        "refunded": money(refunded),
        "credited_to_balance": money(to_balance),
        "voids_invoice": request.void,
        "tax_lines": tax_given_back(standing.tax_lines, standing.gross(), standing.credited, amount, currency),
    }
    return Decision(note_id, "issued", document, to_balance)


def tax_given_back(
    tax_lines: tuple[dict[str, Any], ...], gross: Decimal, credited_before: Decimal, amount: Decimal, currency: str
) -> list[dict[str, Any]]:
    """The part of the invoice's tax lines a note of ``amount`` gives back, one entry per line.

    Each line's ``taxable`` and ``amount`` X is given back in proportion to what the notes have
    credited of ``gross``, from running totals: ``round(X * after / gross) - round(X * before /
    gross)``, rounded half up at the currency's minor unit. Rounding each note's own share
    instead would leave cents over or short; with running totals the rounding differences
    cancel, so the notes of a fully credited invoice give back exactly its tax and taxable,
    however it was split, and each note is within one minor unit of its exact share.
    ``credited_before`` counts every earlier note, those issued before notes carried
    ``tax_lines`` too: theirs was their share, unrecorded, so later notes do not take it.

    Inclusive and exclusive lines alike: inclusive tax is inside the prices the note gives
    back, so its share is part of the note too (shown, as on the invoice, not added). A
    negative line (an adjustment's reversal at other rates) gives back its negative share.
    """
    if gross <= 0:  # no note is issued then (nothing is creditable): nothing to share
        return []
    # Never past the whole: decide keeps every note within what is creditable.
    before = min(credited_before, gross)
    after = min(credited_before + amount, gross)

    def share(whole: str, credited: Decimal) -> Decimal:
        with localcontext() as exact:  # 38-digit amounts: their product must not round before the half-up
            exact.prec = 120
            part = Decimal(whole) * credited / gross
        return round_money(part, currency)

    def given_back(whole: str) -> str:
        return format_money(share(whole, after) - share(whole, before), currency)

    return [
        {
            "key": line["key"],
            "name": line["name"],
            "rate": line["rate"],
            "inclusive": line["inclusive"],
            "taxable": given_back(line["taxable"]),
            "amount": given_back(line["amount"]),
        }
        for line in tax_lines
    ]
