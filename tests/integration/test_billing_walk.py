"""One customer through every money movement in order, on the real broker and ClickHouse,
with a SIGKILL of the worker in the middle: paid credit and an auto top-up request, a
credit limit reached (metered access stops) and restored by a payment, a paid invoice
refunded by a credit note to the balance, a correction that makes the next period negative
and is carried forward, usage drawn from that balance, a cancellation whose late usage is
billed once on a final adjustment, and usage after the final cutoff never billed. Beside it,
the same customer's second subscription (in EUR) bills a seat fee in advance and its usage
progressively at a threshold, the period's invoice deducting what that billed."""

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
    limit = {"currency": "USD", "amount": "8.00"}
    record = {"customer_id": "cust-w", "name": "Walk Ltd", "auto_topup": [rule], "credit_limit": limit}
    assert api.post("/v1/customers", record)[0] == 202
    purchase = {"grant_id": "pack", "customer_id": "cust-w", "amount": "12.00", "currency": "USD",
                "price_paid": "12.00", "payment_reference": "pay-pack", "effective_at": earlier}  # fmt: skip
    assert api.post("/v1/credit-purchases", purchase)[0] == 202
    # Periods [t0, t0+1m), [t0+1m, t0+2m), [t0+2m, t0+3m) cut by the cancellation; cutoffs 1 min
    # after each end; the final cutoff at t0+5m. sub-s: one period [t0-1m, t0+2m), cutoff t0+3m;
    # it starts first, so entitlements answer from sub-w (they read a customer's newest one).
    s0 = t0 - MINUTE
    for sub_id, plan, start, end in (
        ("sub-w", "metered", t0, t0 + 3 * MINUTE),
        ("sub-s", "stepped", s0, t0 + 2 * MINUTE),
    ):
        sub = {"subscription_id": sub_id, "customer_id": "cust-w", "plan": plan, "start": start.isoformat()}
        assert api.post("/v1/subscriptions", sub)[0] == 202
        ended = {"customer_id": "cust-w", "effective_at": end.isoformat()}
        assert api.post(f"/v1/subscriptions/{sub_id}/cancel", ended)[0] == 202

    def tokens(event_id: str, amount: int, at: datetime) -> None:
        assert api.post("/v1/events", [event("cust-w", event_id, amount, at)], content_type=BATCH)[0] == 202

    def calls(event_id: str, count: int, at: datetime) -> None:
        batch = [{"specversion": "1.0", "id": f"{event_id}-{n}", "source": "walk", "type": "api.call",
                  "subject": "cust-w", "time": at.isoformat(), "data": {}} for n in range(count)]  # fmt: skip
        assert api.post("/v1/events", batch, content_type=BATCH)[0] == 202

    def invoice(kind: str, start: datetime, subscription: str = "sub-w") -> dict:
        for summary in api.get("/v1/invoices?customer=cust-w")[1]["invoices"]:
            if (summary["kind"], summary["period_start"], summary["subscription_id"]) == (
                kind,
                start.isoformat(),
                subscription,
            ):
                return api.get(f"/v1/invoices/{summary['invoice_id']}")[1]
        return {}

    def access() -> tuple[bool, str | None]:
        status, body = api.get("/v1/customers/cust-w/entitlements/llm")
        assert status == 200, body
        return body["has_access"], body["reason"]

    def lines(document: dict) -> list[tuple[str, str]]:
        return [(line["description"], line["amount"]) for line in document["lines"]]

    # The EUR subscription's seat fee is billed at its start, in advance, for its first period.
    opening = wait_for(lambda: invoice("advance", s0, "sub-s"), 60, "the opening invoice")
    assert (lines(opening), opening["total"], opening["currency"]) == ([("Seat", "3.00")], "3.00", "EUR")
    assert opening["lines"][0]["service_period_end"] == (t0 + 2 * MINUTE).isoformat()
    calls("c1", 6, t0 + timedelta(seconds=3))  # 6.00 EUR of calls: past the 5.00 threshold

    def amounts(document: dict) -> tuple[str, str, str, str]:
        return tuple(document[k] for k in ("subtotal", "credits_applied", "total", "carried_forward"))  # type: ignore[return-value]

    # Period 0: 20.00 of usage; the 12.00 of paid credit pays part and the balance falls
    # below the top-up threshold: one request.
    tokens("p0", 2000, t0 + timedelta(seconds=1))
    # 20.00 running against a limit of 8.00: metered access stops until the exposure falls.
    wait_for(lambda: access() == (False, "credit_limit_reached"), 90, "the credit limit reached")
    p0 = wait_for(lambda: invoice("period", t0), 200, "period 0's invoice")
    assert amounts(p0) == ("20.00", "12.00", "8.00", "0.00")
    assert p0["topup_requested"] == [{**rule, "balance": "0.00"}]
    assert [a["funding"] for a in p0["credit_allocations"]] == ["paid"]

    # The customer pays 8.00; a credit note then gives 3.00 back to the balance.
    paid = {"outcome": "succeeded", "invoice_id": p0["invoice_id"], "payment_id": "pay-0", "amount": "8.00",
            "currency": "USD"}  # fmt: skip
    assert api.post("/v1/payments", paid)[0] == 202
    wait_for(lambda: stack.query("SELECT count() FROM payments FINAL WHERE payment_id = 'pay-0'")[0][0] == 1, 60, "pay")
    wait_for(lambda: access() == (True, None), 60, "metered access restored by the payment")
    # By now (past t0+1m) the calls have been seen: a progressive invoice for the usage so far.
    early = wait_for(lambda: invoice("progressive", s0, "sub-s"), 60, "the progressive invoice")
    assert (lines(early), early["total"]) == ([("calls", "6.00")], "6.00")
    assert datetime.now(UTC) < t0 + 2 * MINUTE + timedelta(seconds=40), "the next calls must land before the cutoff"
    calls("c2", 2, t0 + MINUTE + timedelta(seconds=5))
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
    # The EUR period's own invoice: all 8 calls, less the 6.00 billed progressively.
    stepped = wait_for(lambda: invoice("period", s0, "sub-s"), 200, "the EUR period's invoice")
    assert lines(stepped) == [("calls", "8.00"), ("Billed on earlier invoices this period (calls)", "-6.00")]
    assert stepped["total"] == "2.00"

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
    eur = [d for d in invoices.values() if d["currency"] == "EUR"]
    assert sorted(d["kind"] for d in eur) == ["advance", "period", "progressive"]  # the empty final one: never sent
    assert sum(D(d["subtotal"]) for d in eur) == D("3.00") + D("8.00")  # the seat and the calls, once
    assert len(invoices) == 4 + 3
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
    limits = {m["id"]: m["type"].split(".")[2] for m in credits if m["type"].startswith("bastionary.credit_limit.")}
    assert sorted(limits.values()) == ["reached", "restored"]  # each once
