"""An ended subscription's late usage on the real broker and ClickHouse: usage that lands
after the last period's cutoff is billed once, on a final adjustment invoice; usage after
the final cutoff is not."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from .billing_helpers import fresh_minute, start_billing_worker
from .dunning_helpers import wait_for
from .test_http_api import BATCH, event

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_late_usage_after_cancellation_is_billed_once_on_a_final_adjustment(stack):
    api, _ = start_billing_worker(stack, grace="PT1M")
    start = fresh_minute(30)
    minute = timedelta(minutes=1)
    # One one-minute period [start, start+1m); cutoff start+2m; final cutoff start+3m.
    sub = {"subscription_id": "sub-f", "customer_id": "cust-f", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", sub)[0] == 202
    cancel = {"customer_id": "cust-f", "effective_at": (start + minute).isoformat()}
    assert api.post("/v1/subscriptions/sub-f/cancel", cancel)[0] == 202

    def tokens(event_id: str, amount: int) -> None:
        payload = event("cust-f", event_id, amount, start + timedelta(seconds=5))  # all within the period
        assert api.post("/v1/events", [payload], content_type=BATCH)[0] == 202

    def invoices() -> list[dict]:
        return api.get("/v1/invoices?customer=cust-f")[1]["invoices"]

    tokens("in-time", 1000)
    (first,) = wait_for(invoices, 180, "the period's invoice")
    assert (first["kind"], first["total"]) == ("period", "10.00")
    assert datetime.now(UTC) < start + 3 * minute, "the late event must land before the final cutoff"
    tokens("late", 300)  # after the cutoff, before the final cutoff
    final = wait_for(lambda: [i for i in invoices() if i["kind"] == "final_adjustment"], 180, "the final adjustment")
    document = api.get(f"/v1/invoices/{final[0]['invoice_id']}")[1]
    assert [(line["price_key"], line["quantity"], line["amount"]) for line in document["lines"]] == [
        ("tokens", "300", "3.00")
    ]
    assert (document["total"], document["period_start"]) == ("3.00", start.isoformat())
    tokens("too-late", 700)  # after the final cutoff: never billed
    time.sleep(5)
    assert sorted(i["kind"] for i in invoices()) == ["final_adjustment", "period"]
