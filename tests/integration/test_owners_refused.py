"""A key scoped to one customer cannot change, cancel or void what another customer owns: 400
``customer_mismatch`` over HTTP, without naming the owner or its plan, and ``billing.dlq`` with
that reason for the same event sent to the topic. A grant id stored for two customers before
the rule stays its first customer's, and a void naming another customer voids nothing. One
worker with the HTTP API, real broker and ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bastionary.apikeys import new_key
from bastionary.catalog import load_catalog
from bastionary.devstack.broker import free_port
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.storage.billing import ClickHouseBillingStore

from .billing_helpers import CATALOG
from .dunning_helpers import cloudevent, read, send, wait_for
from .test_http_api import ADMIN, Api

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_scoped_key_cannot_touch_another_customer_s_subscription_or_grant(stack, tmp_path):
    portal_b, entry = new_key("portal-b", ["read", "write"], "cust-b")
    key_file = tmp_path / "keys.jsonl"
    key_file.write_text(entry.model_dump_json() + "\n")
    port = free_port()
    stack.start_worker(
        "w1",
        BASTIONARY_CATALOG=str(CATALOG),
        BASTIONARY_API_KEYS=ADMIN,
        BASTIONARY_API_KEY_FILE=str(key_file),
        BASTIONARY_WEB_PORT=str(port),
        BASTIONARY_RATING_GRACE="PT0S",
        BASTIONARY_RATING_INTERVAL="PT1S",
    )
    api = Api(port)
    wait_for(lambda: api.get("/healthz")[0] == 200, 90, "the worker")
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    later = (start + timedelta(minutes=5)).isoformat()

    def stored(subscription: str) -> list[tuple[str, str]]:
        sql = "SELECT event_type, customer_id FROM subscriptions FINAL WHERE subscription_id = {s:String} ORDER BY effective_at"
        return [tuple(row) for row in stack.client.query(sql, parameters={"s": subscription}).result_rows]

    created = {"subscription_id": "sub-a", "customer_id": "cust-a", "plan": "metered", "start": start.isoformat()}
    status, answer = api.post("/v1/subscriptions", created)
    assert status == 202, answer
    grant = {"grant_id": "g-a", "customer_id": "cust-a", "amount": "5.00", "currency": "USD"}
    assert api.post("/v1/credit-grants", grant | {"effective_at": start.isoformat()})[0] == 202
    billing = ClickHouseBillingStore(stack.client)
    wait_for(lambda: stored("sub-a") == [("created", "cust-a")], 60, "the created event stored")
    wait_for(lambda: billing.grant_owner("g-a") == "cust-a", 60, "the grant stored")

    as_b = {"customer_id": "cust-b"}
    refused = [
        ("/v1/subscriptions/sub-a/change", as_b | {"plan": "stepped", "effective_at": later}),
        ("/v1/subscriptions/sub-a/cancel", as_b | {"effective_at": later}),
        ("/v1/subscriptions", created | as_b),
        ("/v1/credit-grants/g-a/void", as_b | {"effective_at": later}),
        ("/v1/credit-grants", grant | as_b | {"effective_at": start.isoformat()}),
    ]
    for path, body in refused:
        status, answer = api.post(path, body, key=portal_b)
        assert status == 400 and answer["error"]["reason"] == "customer_mismatch", (path, answer)
        assert "cust-a" not in answer["error"]["message"] and "EUR" not in answer["error"]["message"]
    # Its own subscription, the key changes as it likes.
    own = {"subscription_id": "sub-b", "customer_id": "cust-b", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", own, key=portal_b)[0] == 202
    wait_for(lambda: stored("sub-b") == [("created", "cust-b")], 60, "the scoped key's subscription")
    assert (
        api.post("/v1/subscriptions/sub-b/cancel", {"customer_id": "cust-b", "effective_at": later}, key=portal_b)[0]
        == 202
    )

    # The same cancellation sent to the topic directly ends on billing.dlq with its reason.
    data = {"subscription_id": "sub-a", "customer_id": "cust-b", "effective_at": later}
    send(
        stack,
        "billing.subscriptions",
        [cloudevent("bastionary.subscription.canceled.v1", "cxl", "cust-b", start, data)],
    )
    (dead,) = read(stack, "billing.dlq", expect=1, idle=30)
    assert {name: value.decode() for name, value in dead.headers}["error.class"] == "customer_mismatch"
    wait_for(lambda: stored("sub-b") == [("created", "cust-b"), ("canceled", "cust-b")], 60, "its cancellation")
    assert stored("sub-a") == [("created", "cust-a")]

    # Rows stored before the rule: another customer's grant and void of the same id. The grant
    # stays cust-a's, unvoided, whether read whole or for cust-a.
    recorded = datetime.now(UTC)
    intruders = [
        LedgerRow("m-b", "granted", "g-a", "cust-b", Decimal(500), "USD", 0, start, None, "", recorded),
        LedgerRow("m-void", "voided", "g-a", "cust-b", Decimal(0), "", 0, start, None, "", recorded),
    ]
    billing.insert_ledger(intruders)
    for read_for in (None, "cust-a"):
        grants, _ = billing.grants_as_of(None, read_for)
        (kept,) = [g for gs in grants.values() for g in gs if g.grant_id == "g-a"]
        assert (kept.customer_id, kept.amount, kept.voided_at) == ("cust-a", Decimal("5.00"), None)
    assert billing.grant_owner("g-a") == "cust-a"

    # A payment counts for its invoice: one naming cust-b for cust-a's invoice is refused, and
    # one naming no customer is the invoice's customer's, which the key may not see.
    def invoices() -> list[tuple[str, str]]:
        sql = "SELECT invoice_id, currency FROM invoices FINAL WHERE subscription_id = 'sub-a'"
        return [tuple(row) for row in stack.client.query(sql).result_rows]

    invoice_id, currency = wait_for(lambda: invoices()[:1] or None, 150, "sub-a's first invoice")[0]
    payment = {
        "invoice_id": invoice_id,
        "payment_id": "p-1",
        "outcome": "succeeded",
        "amount": "1.00",
        "currency": currency,
    }
    status, answer = api.post("/v1/payments", payment | as_b, key=portal_b)
    assert status == 400 and answer["error"]["reason"] == "customer_mismatch", answer
    assert api.post("/v1/payments", payment, key=portal_b)[0] == 403
    # A cancellation naming cust-b stored before the rule is applied, as it was billed, and a
    # read for cust-a builds what a whole read builds (it read cust-a's rows only).
    legacy = SubscriptionRow("cxl-old", "canceled", "sub-a", "cust-b", "", start, None, start, datetime.now(UTC), "")
    billing.insert_subscription_events([legacy])
    plans = {plan.key: plan for plan in load_catalog(CATALOG).plans}
    (whole,) = [sub for sub in billing.subscriptions(plans) if sub.subscription_id == "sub-a"]
    assert whole.canceled_at == start and billing.subscriptions(plans, "cust-a") == [whole]

    assert stack.workers["w1"].poll() is None
