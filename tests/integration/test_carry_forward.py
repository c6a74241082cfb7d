"""A negative period on the real broker and ClickHouse: a correction that lands after its
period was billed makes the next invoice negative, which issues at 0 and carries the
difference to the customer's balance, which the invoice after draws on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from .billing_helpers import fresh_minute, start_billing_worker
from .dunning_helpers import wait_for
from .test_http_api import BATCH, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_negative_period_is_carried_to_the_next_invoice(stack):
    api, _ = start_billing_worker(stack)
    start = fresh_minute()
    minute = timedelta(minutes=1)
    sub = {"subscription_id": "sub-n", "customer_id": "cust-n", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", sub)[0] == 202

    def tokens(event_id: str, amount: int, at: datetime) -> None:
        payload = event("cust-n", event_id, amount, at)
        assert api.post("/v1/events", [payload], content_type=BATCH)[0] == 202

    def invoice(n: int) -> dict:
        found = api.get("/v1/invoices?customer=cust-n")[1]["invoices"]
        ours = [i for i in found if i["period_start"] == (start + n * minute).isoformat()]
        return ours[0] if ours else {}

    tokens("use-0", 1000, start + timedelta(seconds=1))
    first = wait_for(lambda: invoice(0), 150, "period 0's invoice")
    assert (first["subtotal"], first["total"]) == ("10.00", "10.00")
    # A correction of period 0, landing after its invoice: period 1 adjusts it by -10.00.
    tokens("fix-0", -1000, start + timedelta(seconds=2))
    second = wait_for(lambda: invoice(1), 150, "period 1's invoice")
    document = api.get(f"/v1/invoices/{second['invoice_id']}")[1]
    assert (document["subtotal"], document["total"], document["carried_forward"]) == ("-10.00", "0.00", "10.00")
    wait_for(lambda: datetime.now(UTC) >= start + 2 * minute, 120, "period 2")
    tokens("use-2", 500, datetime.now(UTC))
    third = wait_for(lambda: invoice(2), 150, "period 2's invoice")
    assert (third["subtotal"], third["credits_applied"], third["total"]) == ("5.00", "5.00", "0.00")
    kinds = sorted(m["kind"] for m in api.get("/v1/customers/cust-n/credits/ledger")[1]["movements"])
    assert kinds == ["applied", "carried"]
    balance = api.get("/v1/customers/cust-n/credits")[1]
    assert balance["balances"] == [
        {"currency": "USD", "promotional": "0.00", "paid": "0.00", "carried": "5.00", "available": "5.00"}
    ]
