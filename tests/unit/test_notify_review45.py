"""Notices whose data the email cannot carry, delivered by the real Notifier to a real aiohttp
receiver and a real aiosmtpd sink on 127.0.0.1 (review 45).

Before: an invoice id with a line break (an invoice from another producer), or any field the
templates cannot render, raised out of ``Notifier.handle`` and stopped the worker, which met
the same record again on restart; a ``billing_email`` the intake pattern accepts but that
parses as another address ("a(b@acme.example" is the local user "a") got the invoice sent to
that other address; a notice listing a channel twice reached the customer twice.
"""

from __future__ import annotations

import base64
import email
import json
import time
from email import policy
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from bastionary.dunning.delivery import INVALID_NOTICE, Notifier
from bastionary.dunning.notify.email import SmtpConfig
from bastionary.dunning.notify.webhook import WebhookConfig, verify
from tests.notices import dunning_notice
from tests.smtp_sink import SmtpSink, TrailStore, start_sink

SECRET = "whsec_" + base64.b64encode(b"review-45-notify-key-32-bytes-ok").decode()


@pytest.fixture
def smtp_sink():
    handler = SmtpSink()
    controller = start_sink(handler)
    yield handler, controller.port
    controller.stop()


@pytest.fixture
async def receiver():
    verified: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        verified.append(verify(SECRET, request.headers, await request.read(), now=time.time()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/hooks", verified
    finally:
        await runner.cleanup()


async def _handle(notice: dict[str, Any], smtp_port: int, webhook_url: str | None = None):
    body = json.dumps({"type": "bastionary.dunning.step.v1", "id": notice["notice_id"], "data": notice}).encode()
    dead: list[tuple[str, str]] = []

    async def dead_letter(value: bytes, code: str, message: str) -> None:
        dead.append((code, message))

    smtp = SmtpConfig("127.0.0.1", smtp_port, "billing@bastionary.example", backoff_base=0.01, backoff_cap=0.02)
    webhook = None
    if webhook_url is not None:
        webhook = WebhookConfig(webhook_url, SecretStr(SECRET), backoff_base=0.01, backoff_cap=0.02)
    store = TrailStore()
    notifier = Notifier(store, webhook, smtp, dead_letter)
    try:
        outcomes = await notifier.handle(body)
    finally:
        await notifier.close()
    return {o.channel: o for o in outcomes}, dead, store


async def test_an_invoice_id_with_a_line_break_fails_the_email_only(smtp_sink, receiver):
    sink, port = smtp_sink
    url, verified = receiver
    notice = dunning_notice(["email", "webhook"], invoice_id="inv-1\r\nBcc: attacker@evil.example")
    outcomes, dead, store = await _handle(notice, port, url)
    assert outcomes["webhook"].ok and len(verified) == 1
    assert not outcomes["email"].ok
    assert outcomes["email"].reason.startswith("cannot build the email:")
    assert sink.received == []
    assert [code for code, _ in dead] == ["email_delivery_failed"]
    assert sorted((r.kind, r.channel) for r in store.trail if r.kind != "attempt") == [
        ("delivered", "webhook"),
        ("delivery_failed", "email"),
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"template": "no_such_template"},
        {"amount_due": "lots"},
        {"days_overdue": None},
        {"due_at": "yesterday"},
        {"notice_id": "dn 1"},
    ],
    ids=["template", "amount", "days_overdue", "due_at", "notice_id"],
)
async def test_a_notice_the_templates_cannot_render_is_dead_lettered_not_raised(smtp_sink, overrides):
    sink, port = smtp_sink
    outcomes, dead, _ = await _handle(dunning_notice(["email"], **overrides), port)
    assert not outcomes["email"].ok and outcomes["email"].attempts == 0
    assert [code for code, _ in dead] == ["email_delivery_failed"]
    assert sink.received == []


@pytest.mark.parametrize(
    "recipient",
    ["a(b@acme.example", "attacker,ap@acme.example", 'a"b@acme.example', "x<ap@acme.example", "a;b@acme.example"],
)
async def test_a_billing_email_that_parses_as_another_address_gets_no_email(smtp_sink, recipient):
    sink, port = smtp_sink
    outcomes, dead, _ = await _handle(dunning_notice(["email"], recipient_email=recipient), port)
    assert sink.received == []
    assert not outcomes["email"].ok
    assert "is not one plain address" in outcomes["email"].reason
    assert [code for code, _ in dead] == ["email_delivery_failed"]


@pytest.mark.parametrize("recipient", ["ap@acme.example", "jürgen@bücher.example"])
async def test_a_plain_billing_email_is_delivered_to_itself(smtp_sink, recipient):
    sink, port = smtp_sink
    outcomes, dead, _ = await _handle(dunning_notice(["email"], recipient_email=recipient), port)
    assert outcomes["email"].ok and dead == []
    [(_, rcpt_tos, data)] = sink.received
    assert rcpt_tos == [recipient]
    assert email.message_from_bytes(data, policy=policy.default)["To"] == recipient


async def test_a_notice_listing_a_channel_twice_is_not_sent_twice(smtp_sink):
    sink, port = smtp_sink
    outcomes, dead, _ = await _handle(dunning_notice(["email", "email"]), port)
    assert outcomes == {}
    assert sink.received == []
    assert [code for code, _ in dead] == [INVALID_NOTICE]
