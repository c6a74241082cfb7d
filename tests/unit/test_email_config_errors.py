"""An SMTP configuration aiosmtplib refuses is a failed delivery, recorded and dead-lettered,
never an exception out of the notifier (which stops the worker, that then reads the notice again)."""

from __future__ import annotations

import asyncio

import orjson

from bastionary.dunning.delivery import Notifier
from bastionary.dunning.dunner import STEP_TYPE
from bastionary.dunning.notify.email import SmtpConfig, build_message, render_email, send_email
from bastionary.dunning.notify.retry import Attempt
from tests.notices import dunning_notice

NOTICE = dunning_notice(["email"])
# Both TLS modes: aiosmtplib refuses the pair before it connects, so no server is needed.
BOTH_TLS = SmtpConfig(
    host="127.0.0.1", port=9, sender="billing@bastionary.example", starttls=True, use_tls=True, max_attempts=3
)


class Store:
    def __init__(self) -> None:
        self.trail: list = []

    def delivered_channels(self, notice_id: str) -> set[str]:
        return set()

    def insert_trail(self, rows: list) -> None:
        self.trail += rows


async def test_a_refused_smtp_configuration_is_a_permanent_failure():
    seen: list[Attempt] = []

    async def on_attempt(attempt: Attempt) -> None:
        seen.append(attempt)

    message = build_message(BOTH_TLS, NOTICE, render_email(NOTICE))
    outcome = await send_email(BOTH_TLS, message, on_attempt=on_attempt, sleep=lambda _: asyncio.sleep(0))
    assert (outcome.ok, outcome.attempts) == (False, 1)  # not retried: the next attempt would fail alike
    assert "start_tls and use_tls" in outcome.reason
    assert [a.permanent for a in seen] == [True]


async def test_the_notifier_records_it_as_delivery_failed_and_dead_letters_it():
    store, dead = Store(), []

    async def dead_letter(value: bytes, code: str, message: str) -> None:
        dead.append((code, message))

    body = orjson.dumps({"specversion": "1.0", "type": STEP_TYPE, "id": NOTICE["notice_id"], "data": NOTICE})
    [outcome] = await Notifier(store, None, BOTH_TLS, dead_letter).handle(body)
    assert not outcome.ok
    assert [row.kind for row in store.trail] == ["attempt", "delivery_failed"]
    assert [code for code, _ in dead] == ["email_delivery_failed"]
