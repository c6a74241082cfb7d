"""Paid credit on the real broker and ClickHouse, through the HTTP API: a purchase is drawn
after a promotional grant, and the invoice that takes the balance below the customer's auto
top-up threshold asks for more paid credit, once; a credit note on that invoice, paid wholly
with credit, gives the credit back to the balance."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import orjson
import pytest

from bastionary.kafka import read_topic
from bastionary.rating.credit_notes import credit_note_id

from .billing_helpers import fits_contract, fresh_minute, invoice_events, start_billing_worker
from .dunning_helpers import wait_for
from .test_http_api import BATCH, cli_json, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_paid_credit_is_drawn_after_promotional_and_a_crossing_asks_for_a_topup(stack):
    api, _ = start_billing_worker(stack)
    start = fresh_minute()
    earlier = (start - timedelta(days=1)).isoformat()
    rule = {"currency": "USD", "threshold": "8.00", "amount": "20.00"}
    assert api.post("/v1/customers", {"customer_id": "cust-p", "name": "Paid Ltd", "auto_topup": [rule]})[0] == 202
    purchase = {
        "grant_id": "pack-1",
        "customer_id": "cust-p",
        "amount": "10.00",
        "currency": "USD",
        "price_paid": "9.00",
        "payment_reference": "pay-1",
        "priority": 0,  # still after every promotional grant
        "effective_at": earlier,
    }
    assert api.post("/v1/credit-purchases", purchase)[0] == 202
    promo = {"grant_id": "promo-1", "customer_id": "cust-p", "amount": "5.00", "currency": "USD"}
    assert api.post("/v1/credit-grants", {**promo, "priority": 900, "effective_at": earlier})[0] == 202
    sub = {"subscription_id": "sub-p", "customer_id": "cust-p", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", sub)[0] == 202
    wait_for(lambda: api.get("/v1/customers/cust-p")[0] == 200, 60, "the customer record")
    assert api.get("/v1/customers/cust-p")[1]["auto_topup"] == [rule]
    payload = event("cust-p", "use-0", 1000, start + timedelta(seconds=1))  # 10.00
    assert api.post("/v1/events", [payload], content_type=BATCH)[0] == 202

    def first_invoice() -> dict:
        found = api.get("/v1/invoices?customer=cust-p")[1]["invoices"]
        return found[0] if found else {}

    summary = wait_for(first_invoice, 150, "the first invoice")
    document = api.get(f"/v1/invoices/{summary['invoice_id']}")[1]
    assert (document["subtotal"], document["credits_applied"], document["total"]) == ("10.00", "10.00", "0.00")
    assert document["credit_allocations"] == [
        {"grant_id": "promo-1", "amount": "5.00", "funding": "promotional"},
        {"grant_id": "pack-1", "amount": "5.00", "funding": "paid"},
    ]
    # 15.00 before, 5.00 after: below the 8.00 threshold.
    assert document["topup_requested"] == [{**rule, "threshold": "8.00", "balance": "5.00"}]

    def topups() -> list[dict]:
        messages = asyncio.run(read_topic(stack.bootstrap, f"{stack.prefix}billing.credits", idle_seconds=2.0))
        events = [orjson.loads(m.value) for m in messages]
        return [e for e in events if e["type"] == "bastionary.credit.topup_requested.v1"]

    (request,) = wait_for(topups, 60, "the top-up request")
    for message in (request, *invoice_events(stack)):  # real messages fit the published contracts
        fits_contract(message)
    assert request["data"] == {"customer_id": "cust-p", "invoice_id": summary["invoice_id"], **rule, "balance": "5.00"}

    balance = api.get("/v1/customers/cust-p/credits")[1]
    assert balance["balances"] == [
        {"currency": "USD", "promotional": "0.00", "paid": "5.00", "carried": "0.00", "available": "5.00"}
    ]
    assert [(g["grant_id"], g["funding"]) for g in balance["grants"]] == [
        ("promo-1", "promotional"),
        ("pack-1", "paid"),
    ]
    totals = cli_json(stack, "credits", "balance", "cust-p", "--totals")
    assert totals == balance["balances"]
    movements = cli_json(stack, "credits", "ledger", "cust-p")
    assert movements == api.get("/v1/customers/cust-p/credits/ledger")[1]["movements"]
    bought = [m for m in movements if m["kind"] == "purchased"]
    assert [(m["grant_id"], m["amount"], m["price_paid"], m["payment_reference"]) for m in bought] == [
        ("pack-1", "10.00", "9.00", "pay-1")
    ]
    assert sorted(m["kind"] for m in movements) == ["applied", "applied", "granted", "purchased"]

    # The invoice was paid wholly with credit (total 0.00): a credit note gives that credit back
    # to the balance, even asked to refund to the payment (no money came in). Until 2026-12-05
    # it was rejected: nothing left to credit.
    note = {"credit_note_id": "cn-p", "invoice_id": summary["invoice_id"], "customer_id": "cust-p"}
    assert api.post("/v1/credit-notes", note | {"refund_to": "payment"})[0] == 202

    def decided() -> dict:
        status, body = api.get(f"/v1/credit-notes/{credit_note_id('cust-p', 'cn-p')}")
        return body if status == 200 else {}

    issued = wait_for(decided, 60, "the credit note")
    assert (issued["status"], issued["amount"], issued["refunded"], issued["credited_to_balance"]) == (
        "issued",
        "10.00",
        "0.00",
        "10.00",
    )
    wait_for(
        lambda: api.get("/v1/customers/cust-p/credits")[1]["balances"][0]["available"] == "15.00",
        60,
        "the credit back in the balance",
    )
