"""A credit limit on the real broker and ClickHouse: usage in the open period (its running
charge, priced live) crosses an alert share, then the limit, which turns the metered
entitlement to ``credit_limit_reached``; paying the invoice restores it. Each event once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import orjson
import pytest

from bastionary.kafka import read_topic

from .billing_helpers import fits_contract, fresh_minute, start_billing_worker
from .dunning_helpers import wait_for
from .test_http_api import BATCH, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_credit_limit_flips_metered_access_and_a_payment_restores_it(stack):
    api, _ = start_billing_worker(stack)
    start = fresh_minute(30)
    limit = {"currency": "USD", "amount": "15.00", "alert_at": ["0.5"]}
    assert api.post("/v1/customers", {"customer_id": "cust-l", "credit_limit": limit})[0] == 202
    sub = {"subscription_id": "sub-l", "customer_id": "cust-l", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", sub)[0] == 202

    def tokens(event_id: str, amount: int) -> None:
        payload = event("cust-l", event_id, amount, start + timedelta(seconds=1))
        assert api.post("/v1/events", [payload], content_type=BATCH)[0] == 202

    def access() -> tuple[bool, str | None]:
        status, body = api.get("/v1/customers/cust-l/entitlements/llm")
        assert status == 200, body
        return body["has_access"], body["reason"]

    def limit_events() -> list[dict]:
        messages = asyncio.run(read_topic(stack.bootstrap, f"{stack.prefix}billing.credits", idle_seconds=1.5))
        events = [orjson.loads(m.value) for m in messages]
        return [e for e in events if e["type"].startswith("bastionary.credit_limit.")]

    def kinds() -> list[str]:
        return [e["type"].split(".")[2] for e in limit_events()]

    tokens("a", 1000)  # 10.00 running: past half the limit
    wait_for(lambda: kinds() == ["threshold_crossed"], 60, "the alert")
    assert wait_for(access, 30, "a check") == (True, None)
    tokens("b", 600)  # 16.00: past the limit
    wait_for(lambda: kinds() == ["threshold_crossed", "reached"], 60, "the limit reached")
    wait_for(lambda: access() == (False, "credit_limit_reached"), 30, "metered access to stop")
    status, portal = api.get("/v1/customers/cust-l/entitlements/portal")
    assert status == 200 and portal["has_access"]  # only metered features stop

    # The period closes: 16.00 is now unpaid, still past the limit. Paying it restores access.
    def first_invoice() -> dict:
        found = api.get("/v1/invoices?customer=cust-l")[1]["invoices"]
        return found[0] if found else {}

    invoice = wait_for(first_invoice, 150, "the invoice")
    assert invoice["total"] == "16.00"
    assert access() == (False, "credit_limit_reached")
    # The new period crosses half the limit at once (the unpaid 16.00 counts): once per period.
    # Waited for, so that the payment cannot land before the run that sees it unpaid.
    wait_for(lambda: kinds() == ["threshold_crossed", "reached", "threshold_crossed"], 60, "the new period's alert")
    paid = {"outcome": "succeeded", "invoice_id": invoice["invoice_id"], "payment_id": "pay-l", "amount": "16.00",
            "currency": "USD"}  # fmt: skip
    assert api.post("/v1/payments", paid)[0] == 202
    wait_for(lambda: kinds()[-1:] == ["restored"], 60, "the limit restored")
    wait_for(lambda: access() == (True, None), 30, "metered access to return")
    events = limit_events()
    assert kinds() == ["threshold_crossed", "reached", "threshold_crossed", "restored"]
    assert len({e["id"] for e in events}) == len(events)  # each once
    for message in events:
        fits_contract(message)
    assert events[1]["data"]["exposure"] == "16.00" and events[1]["data"]["running_charge"] == "16.00"
