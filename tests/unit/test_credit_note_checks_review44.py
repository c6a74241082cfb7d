"""An issued credit note read by dunning from ``billing.invoices`` is checked against its invoice
as a payment is: another currency (``wrong_currency``), another customer (``customer_mismatch``)
or an invoice not read yet (``unknown_invoice``) is dead-lettered on ``dunning.dlq``, whole, and
not counted. Before, such a note was stored at face value: 90.00 EUR taken off a USD invoice as
90.00 USD, or another customer's invoice lowered (or voided) by naming it. The rater's own notes
always fit; this guards against another producer's."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from bastionary.dunning.events import check_credit_note_against_invoice, parse_credit_note_issued
from bastionary.dunning.ports import PaymentRow, ReceivableRow
from bastionary.rating.credit_notes import CREDIT_NOTE_ISSUED
from bastionary.rating.events import InvalidBillingEvent
from bastionary.worker.services.dunning import DunningService
from tests.unit.test_credit_notes import issued, issued_event, request, standing
from tests.unit.test_intake_guard import App, DeadLetters, Message, Stream

DUNNING_DLQ = "t.dunning.dlq"
INVOICES_TOPIC = "t.billing.invoices"
ISSUED_AT = "2026-03-02T00:00:00Z"


class InvoiceStore:
    """The dunning store as the invoice intake uses it: receivables in, payments in, and an
    invoice's (currency, customer) from the receivables read so far."""

    def __init__(self) -> None:
        self.receivables: list[ReceivableRow] = []
        self.payments: list[PaymentRow] = []

    def insert_receivables(self, rows: list[ReceivableRow]) -> None:
        self.receivables.extend(rows)

    def insert_payments(self, rows: list[PaymentRow]) -> None:
        self.payments.extend(rows)

    def invoice_currency_customer(self, invoice_id: str) -> tuple[str, str] | None:
        found = [(row.currency, row.customer_id) for row in self.receivables if row.invoice_id == invoice_id]
        return found[0] if found else None


def dunning_service(store: InvoiceStore, dead_letters: DeadLetters, app: App) -> DunningService:
    ctx: Any = SimpleNamespace(
        app=app,
        dead_letter=dead_letters,
        topics=SimpleNamespace(dunning_dlq=DUNNING_DLQ),
        settings=SimpleNamespace(dunning_backfill=False),
    )
    catalog: Any = SimpleNamespace(dunning=SimpleNamespace(policies=[]))
    service = DunningService(ctx, catalog, lambda: None, lambda customer: True)
    service._store = store
    return service


def cloud_event(event_id: str, event_type: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"specversion": "1.0", "id": event_id, "source": "//other-producer", "type": event_type,
         "time": ISSUED_AT, "data": data}
    )  # fmt: skip


def finalized_invoice(invoice_id: str, customer: str, currency: str, total: str) -> bytes:
    when = {"issued_at": ISSUED_AT, "due_at": ISSUED_AT, "period_start": ISSUED_AT, "period_end": ISSUED_AT}
    data = {"invoice_id": invoice_id, "customer_id": customer, "currency": currency, "total": total} | when
    return cloud_event(f"evt-{invoice_id}", "bastionary.invoice.finalized.v1", data)


def credit_note(note_id: str, invoice_id: str, customer: str, currency: str, amount: str) -> bytes:
    data = {"credit_note_id": note_id, "invoice_id": invoice_id, "customer_id": customer, "currency": currency,
            "amount": amount, "issued_at": ISSUED_AT}  # fmt: skip
    return cloud_event(note_id, CREDIT_NOTE_ISSUED, data)


def test_the_invoice_intake_dead_letters_a_note_that_does_not_fit_its_invoice_and_stores_the_rest():
    """The review's case among them: a note naming another customer, in EUR, for a USD invoice
    was stored as ``('credited', 'inv-1', 'cust-OTHER', '90.00', 'EUR')``."""
    store, dead_letters, app = InvoiceStore(), DeadLetters(), App()
    the_raters_note = issued(request(amount="30"), standing())  # inv-1, customer c1, USD
    early_note = credit_note("cn-early", "inv-1", "c1", "USD", "10.00")
    records = [
        Message(0, early_note, topic=INVOICES_TOPIC),  # read before its invoice
        Message(1, finalized_invoice("inv-1", "c1", "USD", "100.00"), topic=INVOICES_TOPIC),
        Message(2, credit_note("cn-eur", "inv-1", "c1", "EUR", "90.00"), topic=INVOICES_TOPIC),
        Message(3, credit_note("cn-other", "inv-1", "cust-OTHER", "USD", "90.00"), topic=INVOICES_TOPIC),
        Message(4, credit_note("cn-both", "inv-1", "cust-OTHER", "EUR", "90.00"), topic=INVOICES_TOPIC),
        Message(5, issued_event(the_raters_note), topic=INVOICES_TOPIC),
        Message(6, early_note, topic=INVOICES_TOPIC),  # the dead letter replayed: not lost
    ]
    stream = Stream(records)
    asyncio.run(dunning_service(store, dead_letters, app)._invoice_intake(stream))
    assert [(topic, offset, code) for topic, offset, code, _, _ in dead_letters.sent] == [
        (DUNNING_DLQ, 0, "unknown_invoice"),
        (DUNNING_DLQ, 2, "wrong_currency"),
        (DUNNING_DLQ, 3, "customer_mismatch"),
        (DUNNING_DLQ, 4, "customer_mismatch"),
    ]
    credited = [(r.payment_id, r.invoice_id, r.customer_id, r.amount, r.currency) for r in store.payments]
    assert credited == [
        (the_raters_note["credit_note_id"], "inv-1", "c1", Decimal("30.00"), "USD"),
        ("cn-early", "inv-1", "c1", Decimal("10.00"), "USD"),
    ]
    assert stream.acked == [0, 1, 2, 3, 4, 5, 6] and not app.crashes


@pytest.mark.parametrize(
    ("invoice", "customer", "currency", "code"),
    [
        (None, "c1", "USD", "unknown_invoice"),
        (("USD", "c1"), "c1", "EUR", "wrong_currency"),
        (("USD", "c1"), "cust-OTHER", "USD", "customer_mismatch"),
        (("USD", "c1"), "cust-OTHER", "EUR", "customer_mismatch"),
    ],
)
def test_a_note_that_does_not_fit_its_invoice_gets_the_payments_reason(invoice, customer, currency, code):
    data = parse_credit_note_issued(credit_note("cn-1", "inv-1", customer, currency, "90.00"))
    assert data is not None
    with pytest.raises(InvalidBillingEvent) as refused:
        check_credit_note_against_invoice(data, invoice)
    assert refused.value.code == code
    if code == "customer_mismatch":  # the other customer's invoice's currency is not told
        assert "USD" not in str(refused.value) and "c1" not in str(refused.value)


def test_a_note_that_fits_its_invoice_passes():
    data = parse_credit_note_issued(credit_note("cn-1", "inv-1", "c1", "USD", "90.00"))
    assert data is not None
    check_credit_note_against_invoice(data, ("USD", "c1"))
