"""Rating end to end: subscriptions, grants and usage in; invoices on billing.invoices equal an
independent computation written here; a second rater and a killed rater change nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path

import orjson
import pytest

from bastionary.kafka import UsageProducer, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "billing_catalog.yaml"
CENT = Decimal("0.01")


def _cloudevent(event_type: str, event_id: str, subject: str, when: datetime, data: dict) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "rating-test",
        "type": event_type,
        "subject": subject,
        "time": when.isoformat(),
        "data": data,
    }


async def _send(stack, topic: str, payloads: list[dict]) -> list:
    async with UsageProducer(stack.bootstrap) as producer:
        futures = [await producer.send(f"{stack.prefix}{topic}", p) for p in payloads]
        return list(await asyncio.gather(*futures))


def _expected_pro(tokens_gpt4: int, calls: int, credit: Decimal) -> dict:
    """pro: base 10.00 + graduated gpt-4 tokens (first 1000 free, then 0.002 + 1.00 flat) +
    0.0015 per call; minimum commitment 25.00; credits up to the subtotal."""
    lines = [Decimal("10.00")]
    extra = max(0, tokens_gpt4 - 1000)
    lines.append((Decimal(extra) * Decimal("0.002") + (Decimal(1) if extra else 0)).quantize(CENT, ROUND_HALF_UP))
    lines.append((Decimal(calls) * Decimal("0.0015")).quantize(CENT, ROUND_HALF_UP))
    if sum(lines) < Decimal(25):
        lines.append(Decimal(25) - sum(lines))
    subtotal = sum(lines)
    applied = min(credit, subtotal)
    return {"subtotal": subtotal, "credits": applied, "total": subtotal - applied}


def _expected_team(tokens: int, calls: int, payments: Decimal, payment_events: int, users: int) -> dict:
    volume_rate = Decimal("0.001") if tokens <= 5000 else Decimal("0.0005")
    lines = [
        Decimal("99.00"),
        (tokens * volume_rate).quantize(CENT, ROUND_HALF_UP),
        ((Decimal(calls) / 100).to_integral_value(ROUND_CEILING) * Decimal("2.50")).quantize(CENT),
        # min_amount 1.00 applies only to a period with payment events
        (
            max(Decimal(1), payments * Decimal("0.029") + Decimal("0.30") * payment_events)
            if payment_events
            else Decimal(0)
        ).quantize(CENT, ROUND_HALF_UP),
        Decimal(users * 3).quantize(CENT),
    ]
    subtotal = sum(lines)
    return {"subtotal": subtotal, "credits": Decimal(0), "total": subtotal}


def test_invoices_equal_an_independent_computation_and_raters_never_disagree(stack):
    # Start at a fresh minute so all usage lands (by broker time) inside the first period.
    while datetime.now(UTC).second > 30:
        time.sleep(1)
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    env = {
        "BASTIONARY_CATALOG": str(CATALOG),
        "BASTIONARY_RATING_GRACE": "PT0S",
        "BASTIONARY_RATING_INTERVAL": "PT2S",
    }
    stack.start_worker("w1", **env)
    subs = [
        _cloudevent(
            "bastionary.subscription.created.v1",
            "sub-a",
            "cust-a",
            start,
            {"subscription_id": "sub-a", "customer_id": "cust-a", "plan": "pro", "start": start.isoformat()},
        ),
        _cloudevent(
            "bastionary.subscription.created.v1",
            "sub-b",
            "cust-b",
            start,
            {"subscription_id": "sub-b", "customer_id": "cust-b", "plan": "team", "start": start.isoformat()},
        ),
        _cloudevent(
            "bastionary.subscription.created.v1",
            "sub-c",
            "cust-c",
            start,
            {"subscription_id": "sub-c", "customer_id": "cust-c", "plan": "pro", "start": start.isoformat()},
        ),
    ]
    grants = [
        _cloudevent(
            "bastionary.credit.granted.v1",
            "g1",
            "cust-a",
            start,
            {
                "grant_id": "g1",
                "customer_id": "cust-a",
                "amount": "5.00",
                "currency": "USD",
                "priority": 1,
                "effective_at": (start - timedelta(days=1)).isoformat(),
            },
        ),
        _cloudevent(
            "bastionary.credit.granted.v1",
            "g2",
            "cust-a",
            start,
            {
                "grant_id": "g2",
                "customer_id": "cust-a",
                "amount": "100.00",
                "currency": "EUR",
                "priority": 0,
                "effective_at": (start - timedelta(days=1)).isoformat(),
            },
        ),  # wrong currency: never used
    ]
    asyncio.run(_send(stack, "billing.subscriptions", subs))
    asyncio.run(_send(stack, "billing.credit-grants", grants))
    t = start + timedelta(seconds=1)
    usage = []
    for i in range(30):
        usage.append(_cloudevent("llm.completion", f"a-tok-{i}", "cust-a", t, {"tokens": 100, "model": "gpt-4"}))
        usage.append(_cloudevent("llm.completion", f"a-small-{i}", "cust-a", t, {"tokens": 999, "model": "small"}))
        usage.append(_cloudevent("api.request", f"a-api-{i}", "cust-a", t, {"method": "GET"}))
        usage.append(_cloudevent("llm.completion", f"b-tok-{i}", "cust-b", t, {"tokens": 250, "model": "x"}))
        usage.append(_cloudevent("api.request", f"b-api-{i}", "cust-b", t, {"method": "POST"}))
        usage.append(_cloudevent("payment.captured", f"b-pay-{i}", "cust-b", t, {"amount": "12.34"}))
        usage.append(_cloudevent("user.active", f"b-user-{i}", "cust-b", t, {"user_id": f"u{i % 7}"}))
    usage.append(_cloudevent("api.request", "c-api-0", "cust-c", t, {"method": "GET"}))
    metas = asyncio.run(_send(stack, "usage.events", usage + usage[:20]))  # with repeats
    cutoff_ms = (start + timedelta(minutes=1)).timestamp() * 1000
    assert all(m.timestamp < cutoff_ms for m in metas), "usage must be ingested before the cutoff"

    stack.start_worker("w2", **env)  # a second rater, in the same group
    invoices = _wait_for_invoices(stack, {"sub-a", "sub-b", "sub-c"}, timeout=150)
    first_period = {d["subscription_id"]: d for d in invoices if d["period_start"] == start.isoformat()}
    assert set(first_period) == {"sub-a", "sub-b", "sub-c"}

    expected = {
        "sub-a": _expected_pro(tokens_gpt4=3000, calls=30, credit=Decimal("5.00")),
        "sub-b": _expected_team(tokens=7500, calls=30, payments=Decimal("370.20"), payment_events=30, users=7),
        "sub-c": _expected_pro(tokens_gpt4=0, calls=1, credit=Decimal(0)),
    }
    for sub, want in expected.items():
        got = first_period[sub]
        assert Decimal(got["subtotal"]) == want["subtotal"], (sub, got)
        assert Decimal(got["credits_applied"]) == want["credits"], (sub, got)
        assert Decimal(got["total"]) == want["total"], (sub, got)
        assert sum(Decimal(line["amount"]) for line in got["lines"]) == Decimal(got["subtotal"])
        assert got["due_at"] > got["issued_at"]

    # Kill one rater and let the other carry on: every invoice id maps to one content only.
    stack.kill_worker("w2")
    time.sleep(8)
    contents: dict[str, set] = {}
    for data in _invoice_events(stack):
        contents.setdefault(data["invoice_id"], set()).add(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    assert all(len(v) == 1 for v in contents.values()), "an invoice id was published with two contents"
    stored = stack.query(
        "SELECT invoice_id, total FROM invoices FINAL WHERE period_start = {s:DateTime64(3, 'UTC')}", s=start
    )
    assert {str(i) for i, _ in stored} == {first_period[s]["invoice_id"] for s in expected}
    _check_cli(stack, first_period["sub-a"])


def _check_cli(stack, invoice: dict) -> None:
    import json
    import subprocess
    import sys

    bastionary = str(Path(sys.executable).parent / "bastionary")
    env = stack.env("cli")

    def run(*args: str) -> str:
        return subprocess.run([bastionary, *args], env=env, capture_output=True, text=True, check=True).stdout

    balances = {row["grant_id"]: row for row in json.loads(run("credits", "balance", "cust-a", "--format", "json"))}
    assert balances["g1"]["remaining"] == "0.00" and balances["g1"]["status"] == "used_up"
    assert balances["g2"]["remaining"] == "100.00"  # EUR: never drawn by USD invoices
    listed = json.loads(run("invoices", "--customer", "cust-a", "--format", "json"))
    assert invoice["invoice_id"] in {row["invoice_id"] for row in listed}
    html = stack.tmp_path / "invoice.html"
    run("invoice", "show", invoice["invoice_id"], "--html", str(html))
    page = html.read_text()
    assert invoice["invoice_id"] in page and invoice["total"] in page and "<table" in page


def _invoice_events(stack) -> list[dict]:
    messages = asyncio.run(read_topic(stack.bootstrap, f"{stack.prefix}billing.invoices", idle_seconds=2.0))
    return [orjson.loads(m.value)["data"] for m in messages]


def _wait_for_invoices(stack, subscriptions: set[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _invoice_events(stack)
        if subscriptions <= {d["subscription_id"] for d in found}:
            return found
        time.sleep(3)
    raise TimeoutError(f"invoices seen: {[d['subscription_id'] for d in _invoice_events(stack)]}")


def test_rating_bench_rates_every_subscription_once():
    # A child process: chdb admits one data path per process, and this test session has its own.
    import json
    import subprocess
    import sys

    bastionary = Path(sys.executable).parent / "bastionary"
    out = subprocess.run(
        [str(bastionary), "bench", "--rating", "--subscriptions", "300", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    result = json.loads(out)
    assert result["invoices"] == result["invoices_stored_published"] == 300
