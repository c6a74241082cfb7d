"""Entitlements end to end on the real broker and ClickHouse: usage exhausts a hard limit,
an override restores it, a dunning suspension and a payment take access away and give it
back, a restart keeps everything, and a second worker answers checks by routing them."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from bastionary.devstack.broker import free_port
from tests.conftest import BIN

from .dunning_helpers import cloudevent, read, send, wait_for
from .openapi_contract import assert_matches

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "entitlements_catalog.yaml"
KEY = "ent-key"


def worker_env(port: int, **more: str) -> dict[str, str]:
    """A worker serving checks on ``port`` with the test catalog and key, rating off."""
    return {
        "BASTIONARY_CATALOG": str(CATALOG),
        "BASTIONARY_API_KEYS": KEY,
        "BASTIONARY_WEB_PORT": str(port),
        "BASTIONARY_RATING_ENABLED": "false",
    } | more


def get(port: int, path: str, key: str | None = KEY) -> tuple[int, dict]:
    """GET and check the answer against the OpenAPI document, whatever its status."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        status, body = error.code, orjson.loads(error.read())
    assert_matches("GET", path, status, body)
    return status, body


def check(port: int, customer: str, feature: str) -> dict:
    status, body = get(port, f"/v1/customers/{customer}/entitlements/{feature}")
    assert status == 200, body
    return body


def subscribe(stack, customer: str, start: datetime) -> None:
    send(
        stack,
        "billing.subscriptions",
        [
            cloudevent(
                "bastionary.subscription.created.v1",
                f"sub-{customer}",
                customer,
                start,
                {
                    "subscription_id": f"sub-{customer}",
                    "customer_id": customer,
                    "plan": "pro",
                    "start": start.isoformat(),
                },
            )
        ],
    )


def api_calls(customer: str, ids: list[str]) -> list[dict]:
    now = datetime.now(UTC)
    return [cloudevent("api.request", f"{customer}-{i}", customer, now, {"method": "GET"}) for i in ids]


def changes(stack) -> Counter:
    events = [orjson.loads(m.value) for m in read(stack, "entitlements.changes", idle=2)]
    return Counter((e["type"].split(".")[2], e["data"]["feature"], e["data"].get("fraction")) for e in events)


def test_limit_override_suspension_and_restart(stack):
    port = free_port()
    env = worker_env(port, BASTIONARY_DUNNING_INTERVAL="PT0.5S")
    stack.start_worker("w1", **env)
    start = datetime.now(UTC) - timedelta(days=1)
    subscribe(stack, "cust-e", start)
    wait_for(lambda: get(port, "/v1/customers/cust-e/entitlements/api_calls")[0] == 200, 90, "the worker")
    first = check(port, "cust-e", "api_calls")
    assert first | {"reset_at": None} == {
        "feature": "api_calls",
        "has_access": True,
        "type": "metered",
        "usage": "0",
        "limit": "10",
        "balance": "10",
        "soft": False,
        "reset_at": None,
        "reason": None,
        "config": None,
    }
    assert check(port, "cust-e", "seats")["config"] == {"max": 10}
    # While checks come in the worker hands the GIL over every 1 ms, and every 20 ms once they
    # stop (worker/switching.py); reading /metrics is not a request that counts.
    assert metric(port, "bastionary_switch_interval_seconds") == 0.001
    wait_for(lambda: metric(port, "bastionary_switch_interval_seconds") == 0.02, 30, "the long switch interval")
    # The event loop's lag is probed every 0.1 s from the start (worker/loop_lag.py).
    assert metric(port, "bastionary_event_loop_lag_seconds_count") > 0

    ids = [str(i) for i in range(10)]
    send(stack, "usage.events", api_calls("cust-e", ids + ids[:3]))  # 3 repeats, deduplicated
    exhausted = wait_for(
        lambda: (c := check(port, "cust-e", "api_calls"))["has_access"] is False and c, 60, "exhausted"
    )
    assert (exhausted["usage"], exhausted["balance"], exhausted["reason"]) == ("10", "0", "exhausted")
    rollup = stack.query("SELECT sum(event_count) FROM usage_rollup_1m WHERE customer_id = 'cust-e'")[0][0]
    assert rollup == 10  # the same dedupe feeds the rollups and the counters
    # The worker's own garbage collections (worker/collecting.py): a young one follows landed
    # flushes at the latest when nothing has landed for 2 s, as the clock hands collection back.
    wait_for(lambda: metric(port, 'bastionary_gc_pause_seconds_count{kind="young"}') >= 1, 30, "a young collection")

    send(
        stack,
        "entitlements.overrides",
        [
            cloudevent(
                "bastionary.entitlement.override.v1",
                "ov-1",
                "cust-e",
                datetime.now(UTC),
                {
                    "override_id": "ov-1",
                    "customer_id": "cust-e",
                    "feature": "api_calls",
                    "limit_delta": "5",
                    "effective_at": start.isoformat(),
                },
            )
        ],
    )
    restored = wait_for(lambda: (c := check(port, "cust-e", "api_calls"))["has_access"] and c, 30, "override")
    assert (restored["limit"], restored["balance"]) == ("15", "5")

    # Dunning: an invoice due a minute ago; the policy suspends after 2 s; a payment reinstates.
    due = datetime.now(UTC) - timedelta(minutes=1)
    send(
        stack,
        "billing.invoices",
        [
            cloudevent(
                "bastionary.invoice.finalized.v1",
                "inv-e",
                "cust-e",
                due,
                {
                    "invoice_id": "inv-e",
                    "customer_id": "cust-e",
                    "plan": "pro",
                    "currency": "USD",
                    "total": "50.00",
                    "issued_at": due.isoformat(),
                    "due_at": due.isoformat(),
                    "period_start": start.isoformat(),
                    "period_end": due.isoformat(),
                },
            )
        ],
    )
    suspended = wait_for(lambda: (c := check(port, "cust-e", "sso"))["has_access"] is False and c, 60, "suspension")
    assert suspended["reason"] == "suspended"
    assert check(port, "cust-e", "billing_portal")["has_access"] is True  # survives_suspension
    assert check(port, "cust-e", "api_calls")["reason"] == "suspended"
    send(
        stack,
        "billing.payments",
        [
            cloudevent(
                "bastionary.payment.succeeded.v1",
                "pay-e",
                "cust-e",
                due,
                {"payment_id": "pay-e", "invoice_id": "inv-e", "amount": "50.00", "currency": "USD"},
            )
        ],
    )
    wait_for(lambda: check(port, "cust-e", "sso")["has_access"], 60, "reinstatement")

    expected = Counter(
        {
            ("threshold", "api_calls", "0.5"): 1,
            ("threshold", "api_calls", "1"): 1,
            ("exhausted", "api_calls", None): 1,
            ("restored", "api_calls", None): 1,
            ("suspended", "*", None): 1,
            ("reinstated", "*", None): 1,
        }
    )
    wait_for(lambda: changes(stack) == expected, 30, "the change events")

    stack.kill_worker("w1")
    stack.start_worker("w1", **env)
    after = wait_for(
        lambda: (r := get(port, "/v1/customers/cust-e/entitlements/api_calls"))[0] == 200 and r[1], 90, "restart"
    )
    assert (after["usage"], after["limit"], after["has_access"]) == ("10", "15", True)
    assert check(port, "cust-e", "sso")["has_access"] is True
    time.sleep(3)  # a reconciler pass after the restart emits nothing new
    assert changes(stack) == expected

    cli = subprocess.run(
        [str(BIN), "entitlements", "check", "cust-e", "api_calls"],
        env=stack.env("cli") | {"BASTIONARY_CATALOG": str(CATALOG)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout) == after | {"reset_at": orjson.loads(cli.stdout)["reset_at"]}

    status, body = get(port, "/v1/customers/cust-e/entitlements", key=None)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    assert get(port, "/v1/customers/cust-e/entitlements", key="nope")[0] == 403
    assert get(port, "/v1/customers/bad%0Aid/entitlements")[0] == 400  # a control character (a space is an id)
    assert get(port, "/v1/customers/bad%20id/entitlements")[1]["error"]["code"] == "unknown_customer"
    assert get(port, "/v1/customers/nobody/entitlements")[1]["error"]["code"] == "unknown_customer"
    assert get(port, "/v1/customers/cust-e/entitlements/warp_drive")[1]["error"]["code"] == "unknown_feature"
    listing = get(port, "/v1/customers/cust-e/entitlements")[1]
    assert [d["feature"] for d in listing["entitlements"]] == sorted(
        ["sso", "seats", "api_calls", "tokens", "billing_portal"]
    )


def test_any_worker_answers_for_any_customer(stack):
    ports = {"w1": free_port(), "w2": free_port()}
    for worker, port in ports.items():
        stack.start_worker(worker, **worker_env(port))
    start = datetime.now(UTC) - timedelta(days=1)
    customers = [f"c{i}" for i in range(8)]
    for _n, customer in enumerate(customers):
        subscribe(stack, customer, start)
    send(stack, "usage.events", [e for n, c in enumerate(customers) for e in api_calls(c, [str(i) for i in range(n)])])

    def settled() -> bool:
        return all(
            check(port, c, "api_calls")["usage"] == str(n) for port in ports.values() for n, c in enumerate(customers)
        )

    def split_between_owners() -> bool:
        # Each customer's state lives on its owner only (the other worker's answers were
        # routed): both hold some, and together exactly one copy of each of the 8. Polled with
        # the checks, since a late rebalance empties a worker's memory until the next check.
        if not settled():
            return False
        in_memory = {w: customers_in_memory(port) for w, port in ports.items()}
        return bool(in_memory["w1"] and in_memory["w2"] and in_memory["w1"] + in_memory["w2"] == len(customers))

    wait_for(split_between_owners, 120, "both workers to agree on every customer, each owner holding its own")


def customers_in_memory(port: int) -> int:
    return int(metric(port, "bastionary_entitlement_customers_in_memory"))


def metric(port: int, name: str) -> float:
    """From the worker's own metrics: a structured channel, not its log lines."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    (value,) = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def test_counters_follow_usage_when_a_flush_process_sends_back_only_held_customers_rows(stack):
    """With BASTIONARY_FLUSH_PROCESS the child sends the worker the rollup rows of the customers
    it holds only: a held customer's counter moves by them; one nobody has checked is read
    from ClickHouse when asked, and still emits its changes (the reconciler reads it)."""
    port = free_port()
    env = worker_env(port, BASTIONARY_FLUSH_PROCESS="true")
    stack.start_worker("w1", **env)
    start = datetime.now(UTC) - timedelta(days=1)
    subscribe(stack, "cust-held", start)
    subscribe(stack, "cust-unread", start)
    wait_for(lambda: get(port, "/v1/customers/cust-held/entitlements/api_calls")[0] == 200, 90, "the worker")
    assert check(port, "cust-held", "api_calls")["usage"] == "0"  # held from now on
    ids = [str(i) for i in range(10)]
    for step in (ids[:4], ids[4:] + ids[:2]):  # two flushes, the second with 2 repeats
        send(stack, "usage.events", api_calls("cust-held", step) + api_calls("cust-unread", step))
        time.sleep(1)
    exhausted = wait_for(
        lambda: (c := check(port, "cust-held", "api_calls"))["has_access"] is False and c, 60, "exhausted"
    )
    assert (exhausted["usage"], exhausted["reason"]) == ("10", "exhausted")

    def exhausted_customers() -> set[str]:
        events = [orjson.loads(m.value) for m in read(stack, "entitlements.changes", idle=2)]
        return {e["data"]["customer_id"] for e in events if e["type"].split(".")[2] == "exhausted"}

    wait_for(lambda: exhausted_customers() == {"cust-held", "cust-unread"}, 60, "both customers' exhausted event")
    unread = check(port, "cust-unread", "api_calls")
    assert (unread["usage"], unread["has_access"]) == ("10", False)
