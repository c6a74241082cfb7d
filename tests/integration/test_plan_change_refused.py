"""A plan change to another currency or billing interval is refused where it comes in: 400
``incompatible_plan`` over HTTP, and ``billing.dlq`` with that reason for a record on
``billing.subscriptions``; a change within the subscription's terms is stored. One worker
with the HTTP API, real broker and ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from .billing_helpers import start_billing_worker
from .dunning_helpers import cloudevent, read, send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_change_to_another_currency_or_interval_is_refused_over_http_and_on_the_topic(stack):
    api, _ = start_billing_worker(stack)  # plans: metered (USD, PT1M), stepped (EUR, PT3M)
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    later = (start + timedelta(minutes=5)).isoformat()

    def stored() -> list[tuple[str, str]]:
        return stack.query(
            "SELECT event_type, plan FROM subscriptions FINAL WHERE subscription_id = 'sub-pc' ORDER BY effective_at"
        )

    created = {"subscription_id": "sub-pc", "customer_id": "cust-pc", "plan": "metered", "start": start.isoformat()}
    assert api.post("/v1/subscriptions", created)[0] == 202
    wait_for(lambda: stored() == [("created", "metered")], 60, "the created event stored")

    change = {"customer_id": "cust-pc", "plan": "stepped", "effective_at": later}
    status, answer = api.post("/v1/subscriptions/sub-pc/change", change)
    assert status == 400 and answer["error"]["code"] == "invalid_event", answer
    assert answer["error"]["reason"] == "incompatible_plan"
    assert "cancel the subscription and create a new one" in answer["error"]["message"]
    assert api.post("/v1/subscriptions/sub-pc/change", change | {"plan": "metered"})[0] == 202

    # The same change sent to the topic directly ends on billing.dlq with its reason.
    data = {"subscription_id": "sub-pc", "customer_id": "cust-pc", "plan": "stepped", "effective_at": later}
    send(
        stack,
        "billing.subscriptions",
        [cloudevent("bastionary.subscription.changed.v1", "chg-eur", "cust-pc", start, data)],
    )
    (dead,) = read(stack, "billing.dlq", expect=1, idle=30)
    headers = {name: value.decode() for name, value in dead.headers}
    assert headers["error.class"] == "incompatible_plan"
    assert "EUR" in headers["error.message"] and "USD" in headers["error.message"]

    wait_for(lambda: stored() == [("created", "metered"), ("changed", "metered")], 60, "the compatible change")
    assert stack.workers["w1"].poll() is None
