"""Values the billing, dunning and override tables cannot hold are dead-lettered on the real
broker, and the partition goes on: each bad record below used to pass its parser and make
the insert fail, killing the agent's record (or, for a far-future response, passing the
promise checks). One worker, real ClickHouse."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bastionary.devstack.broker import free_port

from .dunning_helpers import CATALOG, cloudevent, invoice_event, read, send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _headers(message) -> dict[str, str]:
    return {k: v.decode() for k, v in message.headers}


def test_unstorable_billing_values_are_dead_lettered_and_the_partitions_go_on(stack):
    port = free_port()
    stack.start_worker(
        "w1", BASTIONARY_CATALOG=str(CATALOG), BASTIONARY_RATING_ENABLED="false", BASTIONARY_WEB_PORT=str(port)
    )
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=1)

    def subscription(sub_id: str, **data) -> dict:
        return cloudevent(
            "bastionary.subscription.created.v1",
            sub_id,
            "cust-x",
            now,
            {"subscription_id": sub_id, "customer_id": "cust-x", "plan": "pro", "start": start.isoformat(), **data},
        )

    def grant(grant_id: str, **data) -> dict:
        return cloudevent(
            "bastionary.credit.granted.v1",
            grant_id,
            "cust-x",
            now,
            {
                "grant_id": grant_id,
                "customer_id": "cust-x",
                "amount": "5.00",
                "currency": "USD",
                "priority": 1,
                "effective_at": start.isoformat(),
                **data,
            },
        )

    # About 1 MB: the broker takes it, the worker's producer takes at most 1,000,000 bytes, so
    # a dead letter of it whole was refused and stopped the worker on every restart.
    huge = subscription("sub-huge", start="s" * 1_000_000)
    send(
        stack,
        "billing.subscriptions",
        [huge, subscription("sub-far", start="9999-12-31T00:00:00Z"), subscription("sub-ok")],
    )
    send(
        stack,
        "billing.credit-grants",
        [grant("g-int32", priority=2**31), grant("g-digits", amount="1e30"), grant("g-ok")],
    )
    send(
        stack,
        "billing.invoices",
        [
            invoice_event("inv-huge", "cust-x", "100000000000000000000000000000.00"),
            invoice_event("inv-ok", "cust-x", "100.00"),
        ],
    )
    send(
        stack,
        "dunning.responses",
        [
            cloudevent(
                "bastionary.dunning.promised.v1",
                "resp-future",
                "cust-x",
                datetime(2105, 12, 1, tzinfo=UTC),
                {"invoice_id": "inv-ok", "promised_by": "2105-12-20T00:00:00Z"},
            )
        ],
    )
    send(
        stack,
        "entitlements.overrides",
        [
            cloudevent(
                "bastionary.entitlement.override.v1",
                "ovr-huge",
                "cust-x",
                now,
                {
                    "override_id": "ovr-huge",
                    "customer_id": "cust-x",
                    "feature": "api_requests",
                    "limit": "1e30",
                    "effective_at": start.isoformat(),
                },
            )
        ],
    )

    letters = read(stack, "billing.dlq", expect=5, idle=30)
    (cut,) = [m for m in letters if "source.value_bytes" in _headers(m)]
    assert int(_headers(cut)["source.value_bytes"]) == len(orjson.dumps(huge)) > 1_000_000
    assert cut.value == orjson.dumps(huge)[: 64 * 1024] and _headers(cut)["error.class"] == "invalid_data"
    billing = {
        _headers(m)["source.topic"].removeprefix(stack.prefix) + ":" + orjson_id(m.value): _headers(m)
        for m in letters
        if m is not cut
    }
    assert {k: v["error.class"] for k, v in billing.items()} == {
        "billing.subscriptions:sub-far": "invalid_data",
        "billing.credit-grants:g-int32": "invalid_data",
        "billing.credit-grants:g-digits": "invalid_data",
        "entitlements.overrides:ovr-huge": "invalid_data",
    }
    assert "priority" in billing["billing.credit-grants:g-int32"]["error.message"]
    dunning = {orjson_id(m.value): _headers(m) for m in read(stack, "dunning.dlq", expect=2, idle=30)}
    assert {k: v["error.class"] for k, v in dunning.items()} == {
        "inv-huge": "invalid_data",
        "resp-future": "future_time",
    }
    assert "BASTIONARY_MAX_FUTURE_SKEW" in dunning["resp-future"]["error.message"]

    # The good records after the bad ones landed: no partition stopped.
    wait_for(
        lambda: stack.query("SELECT count() FROM subscriptions WHERE subscription_id = 'sub-ok'")[0][0] == 1,
        60,
        "sub-ok",
    )
    wait_for(lambda: stack.query("SELECT count() FROM credit_ledger WHERE grant_id = 'g-ok'")[0][0] == 1, 60, "g-ok")
    wait_for(lambda: stack.query("SELECT count() FROM receivables WHERE invoice_id = 'inv-ok'")[0][0] == 1, 60, "inv")
    assert stack.workers["w1"].poll() is None

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    labels = f'error_class="future_time",topic="{stack.prefix}dunning.responses"'
    assert f"bastionary_intake_dead_lettered_total{{{labels}}} 1.0" in metrics, metrics[-3000:]


def orjson_id(value: bytes) -> str:
    return orjson.loads(value)["id"]
