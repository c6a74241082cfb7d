"""Credit notes on the real broker and ClickHouse, through the HTTP API: a note on an open
invoice lowers what dunning chases; after payment, a note gives money back to the
customer's balance, which the ledger shows; a note for more than is left is rejected."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from bastionary.rating.credit_notes import credit_note_id

from .billing_helpers import fits_contract, fresh_minute, invoice_events, start_billing_worker
from .dunning_helpers import wait_for
from .test_http_api import BATCH, cli_json, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_credit_notes_lower_what_is_due_refund_to_the_balance_and_never_credit_too_much(stack):
    api, _ = start_billing_worker(stack)
    start = fresh_minute()
    sub = {"subscription_id": "sub-c", "customer_id": "cust-c", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", sub)[0] == 202
    payload = event("cust-c", "use-0", 1000, start + timedelta(seconds=1))  # 10.00
    assert api.post("/v1/events", [payload], content_type=BATCH)[0] == 202

    def first_invoice() -> dict:
        found = api.get("/v1/invoices?customer=cust-c")[1]["invoices"]
        return found[0] if found else {}

    invoice = wait_for(first_invoice, 150, "the invoice")["invoice_id"]

    def decided(requested: str) -> dict:
        status, body = api.get(f"/v1/credit-notes/{credit_note_id('cust-c', requested)}")
        return body if status == 200 else {}

    def payments(kind: str) -> Decimal:
        rows = stack.query(
            "SELECT sum(amount) FROM payments FINAL WHERE invoice_id = {i:String} AND kind = {k:String}",
            i=invoice,
            k=kind,
        )
        return Decimal(rows[0][0] or 0)

    note = {"credit_note_id": "cn-1", "invoice_id": invoice, "customer_id": "cust-c", "amount": "4", "reason": "outage"}
    assert api.post("/v1/credit-notes", note)[0] == 202
    first = wait_for(lambda: decided("cn-1"), 60, "the first credit note")
    assert (first["status"], first["amount"], first["reduces_amount_due"], first["credited_to_balance"]) == (
        "issued",
        "4.00",
        "4.00",
        "0.00",
    )
    assert first["lines"] == [{"description": "outage", "amount": "4.00"}]
    wait_for(lambda: payments("credited") == 4, 60, "dunning to see the credit")  # what is due: 6.00

    paid = {"outcome": "succeeded", "invoice_id": invoice, "payment_id": "pay-1", "amount": "6.00", "currency": "USD"}
    assert api.post("/v1/payments", paid)[0] == 202
    wait_for(lambda: payments("succeeded") == 6, 60, "the payment")
    refund = {"credit_note_id": "cn-2", "invoice_id": invoice, "customer_id": "cust-c", "amount": "3.00"}
    assert api.post("/v1/credit-notes", refund)[0] == 202
    second = wait_for(lambda: decided("cn-2"), 60, "the second credit note")
    assert (second["reduces_amount_due"], second["refunded"], second["credited_to_balance"]) == ("0.00", "0.00", "3.00")
    too_much = {"credit_note_id": "cn-3", "invoice_id": invoice, "customer_id": "cust-c", "amount": "3.01"}
    assert api.post("/v1/credit-notes", too_much)[0] == 202
    third = wait_for(lambda: decided("cn-3"), 60, "the third credit note")
    assert third["status"] == "rejected" and "still creditable" in third["rejection"]

    decisions = [e for e in invoice_events(stack) if e["type"].startswith("bastionary.credit_note.")]
    assert sorted(e["data"]["status"] for e in decisions) == ["issued", "issued", "rejected"]
    for message in invoice_events(stack):  # real messages fit the published contracts
        fits_contract(message)
    balance = api.get("/v1/customers/cust-c/credits")[1]["balances"]
    assert balance == [
        {"currency": "USD", "promotional": "0.00", "paid": "0.00", "carried": "3.00", "available": "3.00"}
    ]
    kinds = [m["kind"] for m in api.get("/v1/customers/cust-c/credits/ledger")[1]["movements"]]
    assert kinds == ["credit_note"]
    listed = cli_json(stack, "credit-notes", "--customer", "cust-c")
    assert [(n["status"], n["amount"]) for n in listed] == [("issued", "4.00"), ("issued", "3.00"), ("rejected", "0")]
    assert api.get("/v1/credit-notes?customer=cust-c")[1]["credit_notes"] == listed
