"""Notice delivery against real servers on 127.0.0.1: an aiohttp receiver and an aiosmtpd sink.

Nothing is mocked: the webhook receiver checks signatures with the same ``verify`` a
customer would run, and the SMTP sink is a real server the client speaks SMTP to.
"""

from __future__ import annotations

import asyncio
import base64
import email
import json
import time
from dataclasses import dataclass
from email import policy

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bastionary.dunning.notify.email import (
    SmtpConfig,
    build_message,
    render_email,
    send_email,
)
from bastionary.dunning.notify.retry import Attempt
from bastionary.dunning.notify.webhook import (
    ID_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    WebhookConfig,
    deliver_webhook,
    verify,
)
from tests.notices import dunning_notice
from tests.smtp_sink import SmtpSink, free_port, start_sink

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"integration-test-key-32-bytes-ok").decode()
NOTICE = dunning_notice(["email", "webhook"])
BODY = json.dumps(
    {
        "specversion": "1.0",
        "id": NOTICE["notice_id"],
        "source": "bastionary/dunning",
        "type": "bastionary.dunning.step.v1",
        "datacontenttype": "application/json",
        "data": NOTICE,
    }
).encode()


class Attempts:
    def __init__(self) -> None:
        self.seen: list[Attempt] = []

    async def __call__(self, attempt: Attempt) -> None:
        self.seen.append(attempt)


# --- webhook -------------------------------------------------------------------------------


@dataclass
class Seen:
    webhook_id: str | None
    idempotency_key: str | None
    content_type: str | None
    timestamp: str | None
    signature: str | None
    verified: int | str  # the timestamp, or the SignatureError reason
    body: bytes


class Receiver:
    """A customer's endpoint: verifies each request, then answers from a script."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.delay = 0.0
        self.seen: list[Seen] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verified: int | str = verify(SECRET, request.headers, body, now=time.time())
        except SignatureError as error:
            verified = error.reason
        headers = request.headers
        self.seen.append(
            Seen(
                headers.get(ID_HEADER),
                headers.get(IDEMPOTENCY_HEADER),
                headers.get("Content-Type"),
                headers.get(TIMESTAMP_HEADER),
                headers.get(SIGNATURE_HEADER),
                verified,
                body,
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(verified, str):
            return web.Response(status=401, text=verified)
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, headers=headers)


@pytest.fixture
async def receiver():
    target = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/dunning", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    target.url = f"http://{host}:{port}/hooks/dunning"
    try:
        yield target
    finally:
        await runner.cleanup()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


def webhook_config(url: str, **overrides) -> WebhookConfig:
    settings = {"timeout": 10.0, "max_attempts": 4, "backoff_base": 0.01, "backoff_cap": 0.05} | overrides
    return WebhookConfig(url=url, secret=SecretStr(SECRET), **settings)


async def test_webhook_retries_503_then_delivers(receiver, session):
    receiver.script = [(503, {}), (503, {}), (200, {})]
    attempts = Attempts()
    outcome = await deliver_webhook(
        webhook_config(receiver.url), session, NOTICE["notice_id"], BODY, on_attempt=attempts
    )
    assert outcome.ok and outcome.attempts == 3 and outcome.reason == "http 200"
    assert [(a.number, a.ok, a.detail) for a in attempts.seen] == [
        (1, False, "http 503"),
        (2, False, "http 503"),
        (3, True, "http 200"),
    ]
    assert len(receiver.seen) == 3
    for seen in receiver.seen:
        assert seen.webhook_id == seen.idempotency_key == NOTICE["notice_id"]
        assert seen.signature.startswith("v1,") and " " not in seen.signature
        assert seen.content_type == "application/cloudevents+json"
        assert isinstance(seen.verified, int), seen.verified
        assert seen.body == BODY


async def test_webhook_signs_each_attempt_afresh(receiver, session):
    receiver.script = [(503, {}), (200, {})]
    base = int(time.time())
    ticks = iter([base, base + 7])
    await deliver_webhook(webhook_config(receiver.url), session, NOTICE["notice_id"], BODY, clock=lambda: next(ticks))
    assert [seen.timestamp for seen in receiver.seen] == [str(base), str(base + 7)]
    assert [seen.verified for seen in receiver.seen] == [base, base + 7]
    assert receiver.seen[0].signature != receiver.seen[1].signature


async def test_webhook_400_is_permanent(receiver, session):
    receiver.script = [(400, {}), (200, {})]
    attempts = Attempts()
    outcome = await deliver_webhook(
        webhook_config(receiver.url), session, NOTICE["notice_id"], BODY, on_attempt=attempts
    )
    assert not outcome.ok and outcome.attempts == 1 and outcome.reason == "http 400"
    assert [a.permanent for a in attempts.seen] == [True]
    assert len(receiver.seen) == 1


async def test_webhook_wrong_secret_is_refused_permanently(receiver, session):
    other = "whsec_" + base64.b64encode(b"not-the-secret-the-receiver-has").decode()
    config = WebhookConfig(url=receiver.url, secret=SecretStr(other), backoff_base=0.01)
    outcome = await deliver_webhook(config, session, NOTICE["notice_id"], BODY)
    assert (outcome.ok, outcome.attempts, outcome.reason) == (False, 1, "http 401")
    assert receiver.seen[0].verified == "mismatch"


async def test_webhook_honours_retry_after_within_cap(receiver, session):
    receiver.script = [(429, {"Retry-After": "3"}), (503, {"Retry-After": "120"}), (200, {})]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    outcome = await deliver_webhook(
        webhook_config(receiver.url, backoff_cap=10.0), session, NOTICE["notice_id"], BODY, sleep=sleep
    )
    assert outcome.ok and outcome.attempts == 3
    assert slept == [3.0, 10.0]


async def test_webhook_timeout_is_retried(receiver, session):
    receiver.delay = 0.5
    outcome = await deliver_webhook(
        webhook_config(receiver.url, timeout=0.1, max_attempts=2), session, NOTICE["notice_id"], BODY
    )
    assert (outcome.ok, outcome.attempts) == (False, 2)
    assert "timeout" in outcome.reason


async def test_webhook_nothing_listening(session):
    attempts = Attempts()
    config = webhook_config(f"http://127.0.0.1:{free_port()}/hooks/dunning", max_attempts=3)
    outcome = await deliver_webhook(config, session, NOTICE["notice_id"], BODY, on_attempt=attempts)
    assert (outcome.ok, outcome.attempts) == (False, 3)
    assert "connection" in outcome.reason
    assert all(not a.permanent for a in attempts.seen) and len(attempts.seen) == 3


# --- email ---------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink():
    handler = SmtpSink()
    controller = start_sink(handler)
    yield handler, controller.port
    controller.stop()


@pytest.fixture
def refusing_sink():
    handler = SmtpSink(refuse_with="550 no such user")
    controller = start_sink(handler)
    yield handler, controller.port
    controller.stop()


def smtp_config(port: int, **overrides) -> SmtpConfig:
    settings = {"timeout": 10.0, "max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.05} | overrides
    return SmtpConfig(host="127.0.0.1", port=port, sender="billing@bastionary.example", **settings)


async def test_email_is_delivered(smtp_sink):
    handler, port = smtp_sink
    config = smtp_config(port)
    content = render_email(NOTICE)
    attempts = Attempts()
    outcome = await send_email(config, build_message(config, NOTICE, content), on_attempt=attempts)
    assert outcome.ok and outcome.attempts == 1
    assert outcome.reason.startswith("250")
    assert [a.ok for a in attempts.seen] == [True]

    [(mail_from, rcpt_tos, data)] = handler.received
    assert mail_from == "billing@bastionary.example"
    assert rcpt_tos == ["ap@acme.example"]
    message = email.message_from_bytes(data, policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"] == "<dn-0001-step-2@bastionary.notices>"
    assert message["To"] == "ap@acme.example"
    assert message["X-Bastionary-Notice-Id"] == "dn-0001-step-2"
    assert message["X-Bastionary-Invoice-Id"] == "inv-2026-02-0042"
    assert message["Subject"] == content.subject
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for part in (text, html):
        assert "1234.50 EUR" in part
        assert "1 March 2026" in part


async def test_email_refused_recipient_is_permanent(refusing_sink):
    handler, port = refusing_sink
    config = smtp_config(port)
    attempts = Attempts()
    outcome = await send_email(config, build_message(config, NOTICE, render_email(NOTICE)), on_attempt=attempts)
    assert (outcome.ok, outcome.attempts) == (False, 1)
    assert outcome.reason == "smtp 550 no such user"
    assert [a.permanent for a in attempts.seen] == [True]
    assert handler.received == []


async def test_email_nothing_listening_is_retried():
    config = smtp_config(free_port(), max_attempts=2)
    attempts = Attempts()
    outcome = await send_email(config, build_message(config, NOTICE, render_email(NOTICE)), on_attempt=attempts)
    assert (outcome.ok, outcome.attempts) == (False, 2)
    assert "connection" in outcome.reason
    assert [a.permanent for a in attempts.seen] == [False, False]


async def test_email_without_recipient_does_not_connect():
    notice = NOTICE | {"recipient_email": None}
    config = smtp_config(free_port())
    attempts = Attempts()
    outcome = await send_email(config, build_message(config, notice, render_email(notice)), on_attempt=attempts)
    assert (outcome.ok, outcome.attempts, outcome.reason) == (False, 0, "no recipient email")
    assert attempts.seen == []


# --- one notice, two copies at once --------------------------------------------------------


class TrailStore:
    """The store's two calls the notifier makes, kept in memory: a channel is delivered once
    its ``delivered`` row is recorded."""

    def __init__(self) -> None:
        self.trail: list = []

    def delivered_channels(self, notice_id: str) -> set[str]:
        return {r.channel for r in self.trail if r.event_id.startswith(f"{notice_id}:") and r.kind == "delivered"}

    def insert_trail(self, rows: list) -> None:
        self.trail += rows


async def test_two_copies_of_a_notice_in_flight_at_once_reach_each_peer_once(receiver, smtp_sink):
    """A dunner restarted between publishing and marking publishes the notice again, and the
    notifier's delivery slots (DELIVERY_CONCURRENCY) can take both copies at once: each
    checked the delivered channels before the other recorded one, and the customer got two
    emails and two webhooks, though no worker died in the window the README allows."""
    from bastionary.dunning.delivery import Notifier

    handler, port = smtp_sink
    receiver.delay = 0.3  # the first copy is still being delivered when the second arrives
    store = TrailStore()

    async def dead_letter(value: bytes, code: str, message: str) -> None:
        raise AssertionError(f"dead-lettered: {code} {message}")

    notifier = Notifier(store, webhook_config(receiver.url), smtp_config(port), dead_letter)
    try:
        first, second = await asyncio.gather(notifier.handle(BODY), notifier.handle(BODY))
    finally:
        await notifier.close()
    assert sorted(outcome.channel for outcome in first + second) == ["email", "webhook"]
    assert len(handler.received) == 1 and len(receiver.seen) == 1
    assert sorted(row.channel for row in store.trail if row.kind == "delivered") == ["email", "webhook"]
