"""One customer through every money movement in order, on the real broker and ClickHouse,
with a SIGKILL of the worker in the middle: paid credit and an auto top-up request, a paid
invoice refunded by a credit note to the balance, a correction that makes the next period
negative and is carried forward, usage drawn from that balance, a cancellation whose late
usage is billed once on a final adjustment, and usage after the final cutoff never billed.

Credit limits and progressive billing are not built yet, so they are not walked here."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from bastionary.kafka import read_topic
from bastionary.rating.credit_notes import credit_note_id

from .billing_helpers import fits_contract, fresh_minute, invoice_events, start_billing_worker
from .dunning_helpers import wait_for
from .test_http_api import BATCH, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MINUTE = timedelta(minutes=1)
D = Decimal


def test_one_customer_through_every_movement_with_a_sigkill_in_the_middle(stack):
    api, env = start_billing_worker(stack, grace="PT1M")  # period n's cutoff: its end + 1 min
    t0 = fresh_minute(30)
    earlier = (t0 - timedelta(days=1)).isoformat()
    rule = {"currency": "USD", "threshold": "8.00", "amount": "20.00"}
    assert api.post("/v1/customers", {"customer_id": "cust-w", "name": "Walk Ltd", "auto_topup": [rule]})[0] == 202
    purchase = {"grant_id": "pack", "customer_id": "cust-w", "amount": "12.00", "currency": "USD",
                "price_paid": "12.00", "payment_reference": "pay-pack", "effective_at": earlier}  # fmt: skip
    assert api.post("/v1/credit-purchases", purchase)[0] == 202
    sub = {"subscription_id": "sub-w", "customer_id": "cust-w", "plan": "metered", "start": t0.isoformat()}
    assert api.post("/v1/subscriptions", sub)[0] == 202
    # Periods [t0, t0+1m), [t0+1m, t0+2m), [t0+2m, t0+3m) cut by the cancellation; cutoffs 1 min
    # after each end; the final cutoff at t0+5m.
    assert (
        api.post(
            "/v1/subscriptions/sub-w/cancel", {"customer_id": "cust-w", "effective_at": (t0 + 3 * MINUTE).isoformat()}
        )[0]
        == 202
    )

    def tokens(event_id: str, amount: int, at: datetime) -> None:
        assert api.post("/v1/events", [event("cust-w", event_id, amount, at)], content_type=BATCH)[0] == 202

    def invoice(kind: str, start: datetime) -> dict:
        for summary in api.get("/v1/invoices?customer=cust-w")[1]["invoices"]:
            if summary["kind"] == kind and summary["period_start"] == start.isoformat():
                return api.get(f"/v1/invoices/{summary['invoice_id']}")[1]
        return {}

    def amounts(document: dict) -> tuple[str, str, str, str]:
        return tuple(document[k] for k in ("subtotal", "credits_applied", "total", "carried_forward"))  # type: ignore[return-value]

    # Period 0: 20.00 of usage; the 12.00 of paid credit pays part and the balance falls
    # below the top-up threshold: one request.
    tokens("p0", 2000, t0 + timedelta(seconds=1))
    p0 = wait_for(lambda: invoice("period", t0), 200, "period 0's invoice")
    assert amounts(p0) == ("20.00", "12.00", "8.00", "0.00")
    assert p0["topup_requested"] == [{**rule, "balance": "0.00"}]
    assert [a["funding"] for a in p0["credit_allocations"]] == ["paid"]

    # The customer pays 8.00; a credit note then gives 3.00 back to the balance.
    paid = {"outcome": "succeeded", "invoice_id": p0["invoice_id"], "payment_id": "pay-0", "amount": "8.00",
            "currency": "USD"}  # fmt: skip
    assert api.post("/v1/payments", paid)[0] == 202
    wait_for(lambda: stack.query("SELECT count() FROM payments FINAL WHERE payment_id = 'pay-0'")[0][0] == 1, 60, "pay")
    note = {"credit_note_id": "refund-1", "invoice_id": p0["invoice_id"], "customer_id": "cust-w", "amount": "3.00",
            "reason": "goodwill"}  # fmt: skip
    assert api.post("/v1/credit-notes", note)[0] == 202
    decided = wait_for(
        lambda: (r := api.get(f"/v1/credit-notes/{credit_note_id('cust-w', 'refund-1')}"))[0] == 200 and r[1],
        60,
        "note",
    )
    assert (decided["status"], decided["credited_to_balance"]) == ("issued", "3.00")

    # A correction of period 0 lands after its invoice, then the worker is SIGKILLed and
    # restarted: period 1 is negative (-20.00), issued at 0 and carried forward.
    tokens("p0-fix", -2000, t0 + timedelta(seconds=2))
    tokens("p2", 500, t0 + 2 * MINUTE + timedelta(seconds=5))  # period 2 (may land early)
    stack.kill_worker("w1")
    stack.start_worker("w1", **env)
    wait_for(lambda: api.get("/healthz")[0] == 200, 120, "the restarted worker")
    p1 = wait_for(lambda: invoice("period", t0 + MINUTE), 200, "period 1's invoice")
    assert amounts(p1) == ("-20.00", "0.00", "0.00", "20.00")
    # Period 2 (5.00) draws on the balance the note and the carry built.
    p2 = wait_for(lambda: invoice("period", t0 + 2 * MINUTE), 200, "period 2's invoice")
    assert amounts(p2) == ("5.00", "5.00", "0.00", "0.00")

    # Late usage of period 2, before the final cutoff: billed once, on the final adjustment.
    assert datetime.now(UTC) < t0 + 5 * MINUTE, "the late usage must land before the final cutoff"
    tokens("p2-late", 300, t0 + 2 * MINUTE + timedelta(seconds=6))
    final = wait_for(lambda: invoice("final_adjustment", t0 + 2 * MINUTE), 200, "the final adjustment")
    assert amounts(final) == ("3.00", "3.00", "0.00", "0.00")
    tokens("too-late", 100, t0 + 2 * MINUTE + timedelta(seconds=7))
    time.sleep(5)

    # Whatever the SIGKILL cut, each invoice, note and credit event was published with one
    # content, every message fits its contract, and no money was made or lost.
    events = invoice_events(stack)
    contents: dict[str, set[bytes]] = {}
    for message in events:
        fits_contract(message)
        contents.setdefault(message["id"], set()).add(orjson.dumps(message["data"], option=orjson.OPT_SORT_KEYS))
    assert all(len(versions) == 1 for versions in contents.values())
    invoices = {m["data"]["invoice_id"]: m["data"] for m in events if m["type"] == "bastionary.invoice.finalized.v1"}
    assert len(invoices) == 4
    subtotal, applied, total, carried = (sum(D(d[k]) for d in invoices.values()) for k in
                                         ("subtotal", "credits_applied", "total", "carried_forward"))  # fmt: skip
    assert subtotal == applied + total - carried
    # The balance is the ledger's sum: 12 paid + 3 noted + 20 carried - 12 - 5 - 3 drawn.
    balance = api.get("/v1/customers/cust-w/credits")[1]["balances"]
    assert balance == [
        {"currency": "USD", "promotional": "0.00", "paid": "0.00", "carried": "15.00", "available": "15.00"}
    ]
    movements = api.get("/v1/customers/cust-w/credits/ledger")[1]["movements"]
    opened = sum(D(m["amount"]) for m in movements if m["kind"] in ("purchased", "credit_note", "carried"))
    drawn = sum(D(m["amount"]) for m in movements if m["kind"] in ("applied", "expired"))
    assert opened - drawn == D("15.00") and drawn == applied
    credits = [
        orjson.loads(m.value) for m in asyncio.run(read_topic(stack.bootstrap, f"{stack.prefix}billing.credits"))
    ]
    for message in credits:
        fits_contract(message)
    topups = {m["id"] for m in credits if m["type"] == "bastionary.credit.topup_requested.v1"}
    assert len(topups) == 1  # one crossing, one request, however often it was republished
