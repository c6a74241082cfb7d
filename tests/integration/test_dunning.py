"""Dunning end to end on the real broker and ClickHouse, with a real SMTP server and a real
webhook receiver: every step of an unpaid invoice, a payment that stops the policy and lifts
the suspension, a promise that pauses it, and bad payments dead-lettered."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from datetime import timedelta

import orjson
import pytest

from bastionary.devstack.broker import free_port
from bastionary.devstack.local_peers import SmtpSink, WebhookReceiver
from bastionary.dunning.clock import FileClock
from tests.conftest import BIN

from .dunning_helpers import (
    CATALOG,
    DUE,
    SECRET,
    cloudevent,
    events,
    invoice_event,
    notices,
    payment_event,
    read,
    send,
    subscription_event,
    wait_for,
)
from .openapi_contract import assert_matches

pytestmark = [pytest.mark.integration, pytest.mark.slow]
API_KEY = "test-api-key"


def _post(port: int, body: bytes, key: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/dunning/responses",
        data=body,
        method="POST",
        headers={"Content-Type": "application/cloudevents+json"},
    )
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, answer = response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        status, answer = error.code, orjson.loads(error.read())
    assert_matches("POST", "/v1/dunning/responses", status, answer)
    return status, answer


def test_policy_walk_payment_promise_and_dead_letters(stack, tmp_path):
    clock = FileClock(tmp_path / "clock")
    clock.set(DUE - timedelta(hours=1))
    port = free_port()
    with SmtpSink() as smtp, WebhookReceiver(SECRET, fail_first=1) as hooks:
        env = {
            "BASTIONARY_CATALOG": str(CATALOG),
            "BASTIONARY_RATING_ENABLED": "false",
            "BASTIONARY_CLOCK": f"file:{clock.path}",
            "BASTIONARY_DUNNING_INTERVAL": "PT0.5S",
            "BASTIONARY_SMTP_HOST": smtp.host,
            "BASTIONARY_SMTP_PORT": str(smtp.port),
            "BASTIONARY_WEBHOOK_URL": hooks.url,
            "BASTIONARY_WEBHOOK_SECRET": SECRET,
            "BASTIONARY_WEBHOOK_BACKOFF": "PT0.1S",
            "BASTIONARY_API_KEYS": f"other-key,{API_KEY}",
            "BASTIONARY_WEB_PORT": str(port),
        }
        stack.start_worker("w1", **env)
        send(stack, "billing.subscriptions", [subscription_event(c, f"{c}@example.com") for c in ("a", "b", "c")])
        send(
            stack,
            "billing.invoices",
            [
                invoice_event("inv-a", "a", "100.00"),
                invoice_event("inv-b", "b", "120.00"),
                invoice_event("inv-c", "c", "100.00"),
                invoice_event("inv-z", "z", "0"),
            ],
        )
        wait_for(lambda: stack.query("SELECT count() FROM receivables FINAL")[0][0] == 4, 90, "receivables")
        send(
            stack,
            "billing.payments",
            [
                payment_event("p1", "inv-b", "b", "60.00"),
                payment_event("p1", "inv-b", "b", "60.00"),  # duplicate
                payment_event("p-unknown", "inv-nope", "b", "5.00"),
                payment_event("p-eur", "inv-a", "a", "10.00", currency="EUR"),
                payment_event("p-neg", "inv-a", "a", "-10.00"),
            ],
        )
        letters = read(stack, "billing.dlq", expect=3, idle=20)
        reasons = sorted({k: v.decode() for k, v in m.headers}["error.class"] for m in letters)
        assert reasons == ["invalid_data", "unknown_invoice", "wrong_currency"]

        def step_to(days: float, expected: set) -> None:
            clock.set(DUE + timedelta(days=days))
            wait_for(lambda: expected <= notices(stack), 60, f"notices at day {days}: {expected}")

        step_to(1.5, {("inv-a", 1, "remind"), ("inv-b", 1, "remind"), ("inv-c", 1, "remind")})
        assert [r[4] for r in events(stack, "state", "inv-b")][-1] == "overdue"  # 60 of 120 paid, past due

        # A promise to pay by day 12, made on day 2 through the HTTP endpoint.
        clock.set(DUE + timedelta(days=2))
        promise = orjson.dumps(
            cloudevent(
                "bastionary.dunning.promised.v1",
                "promise-c",
                "c",
                DUE + timedelta(days=2),
                {"invoice_id": "inv-c", "promised_by": (DUE + timedelta(days=12)).isoformat()},
            )
        )
        assert _post(port, promise, None)[0] == 401
        assert _post(port, promise, "wrong")[0] == 403
        assert _post(port, b"{not json", API_KEY)[0] == 400
        assert _post(port, promise, API_KEY) == (202, {"accepted": True, "id": "promise-c"})
        wait_for(lambda: events(stack, "response", "inv-c"), 30, "the promise")

        step_to(8, {("inv-a", 2, "remind"), ("inv-b", 2, "remind")})
        step_to(15, {("inv-a", 3, "final_notice"), ("inv-b", 3, "final_notice")})
        assert ("inv-c", 2, "remind") not in notices(stack)  # paused for 10 of these days
        step_to(17.5, {("inv-c", 2, "remind")})
        step_to(22, {("inv-a", 4, "suspend"), ("inv-b", 4, "suspend")})

        send(stack, "billing.payments", [payment_event("p2", "inv-b", "b", "60.00", at=DUE + timedelta(days=22))])
        wait_for(lambda: events(stack, "reinstated", "inv-b"), 60, "reinstatement of b")
        step_to(31, {("inv-a", 5, "mark_uncollectible"), ("inv-c", 4, "suspend")})
        assert not [n for n in notices(stack) if n[0] == "inv-b" and n[1] > 4]
        assert not [n for n in notices(stack) if n[0] == "inv-z"]
        # Downtime-like jump for c: day 22 -> 31 made steps 3 and 4 due at once.
        assert [(r[1], r[4]) for r in events(stack, "skipped", "inv-c")] == [(3, "superseded by step 4")]
        assert [r[4] for r in events(stack, "state", "inv-a")][-2:] == ["overdue", "uncollectible"]
        assert [r[4] for r in events(stack, "state", "inv-b")][-1] == "paid"

        # Every notice with channels reached email and webhook exactly once.
        mailed = {
            ("inv-a", 1),
            ("inv-a", 2),
            ("inv-a", 3),
            ("inv-b", 1),
            ("inv-b", 2),
            ("inv-b", 3),
            ("inv-c", 1),
            ("inv-c", 2),
        }
        wait_for(lambda: len(smtp.received()) >= len(mailed) and len(hooks.unique()) >= len(mailed), 60, "deliveries")
        got_mail = {(m["X-Bastionary-Invoice-Id"], m["Message-ID"]) for m in smtp.received()}
        assert len(smtp.received()) == len(got_mail) == len(mailed)
        for message in smtp.received():
            text = message.get_body(("plain",)).get_content()
            html = message.get_body(("html",)).get_content()
            assert message["To"].endswith("@example.com")
            assert "USD" in text and "1 March 2026" in text and "1 March 2026" in html
        first_b = next(m for m in smtp.received() if m["X-Bastionary-Invoice-Id"] == "inv-b")
        text_b = first_b.get_body(("plain",)).get_content()
        assert "60.00 USD" in text_b and "60.000" not in text_b  # the amount still due, in cents
        bodies = [orjson.loads(d.body) for d in hooks.unique()]
        assert {(b["data"]["invoice_id"], b["data"]["step"]) for b in bodies} == mailed
        assert all(b["type"] == "bastionary.dunning.step.v1" and b["id"] == b["data"]["notice_id"] for b in bodies)
        assert {b["data"]["amount_due"] for b in bodies if b["data"]["invoice_id"] == "inv-a"} == {"100.00"}
        assert hooks.rejected == []
        assert len(hooks.deliveries) == len(mailed)  # the receiver saw no duplicate
        assert any("failed" in r[4] for r in events(stack, "attempt"))  # the first 503 was retried

        on_topic = [orjson.loads(m.value) for m in read(stack, "dunning.notices", idle=3)]
        kinds = {(e["type"], e["data"].get("invoice_id")) for e in on_topic}
        assert ("bastionary.dunning.reinstated.v1", "inv-b") in kinds
        assert {e["id"] for e in on_topic if e["type"].endswith("step.v1")} == {
            e["data"]["notice_id"] for e in on_topic if e["type"].endswith("step.v1")
        }

        report = subprocess.run(
            [str(BIN), "dunning", "report", "--within", "30", "--format", "json"],
            env=stack.env("cli"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        funnel = {row["step"]: row for row in orjson.loads(report.stdout)}
        assert funnel[1]["sent"] == 3 and funnel[1]["paid_within_30d"] == 1
        status = subprocess.run(
            [str(BIN), "dunning", "status", "--customer", "a", "--format", "json"],
            env=stack.env("cli") | {"BASTIONARY_CLOCK": f"file:{clock.path}", "BASTIONARY_CATALOG": str(CATALOG)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert [(r["invoice_id"], r["state"]) for r in orjson.loads(status.stdout)] == [("inv-a", "uncollectible")]
