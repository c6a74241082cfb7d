"""Dunning notice delivery, review 47: delivered by the real Notifier to a real aiosmtpd on
127.0.0.1 (a server offering neither TLS, STARTTLS nor AUTH).

``SMTP_TLS=true`` (TLS from the first byte) against a server that speaks plain SMTP on that
port: the handshake fails the same way on every attempt. Before, each notice was retried to
its last attempt and dead-lettered as ``connection failed: [SSL: WRONG_VERSION_NUMBER] ...``,
which names no setting. Now it fails at once, as ``SMTP_STARTTLS=true`` without STARTTLS
does, and the dead letter names ``BASTIONARY_SMTP_TLS`` and what to set instead.

A step notice whose ``step`` or ``action`` ClickHouse cannot store (a step below 1 or beyond
UInt16, not a whole number, an action that is not a string) passed the notifier's check:
the customer was emailed, then the ``dunning_events`` write failed, stopped the worker, and
the restart read the same record again (and emailed again), holding back every notice
behind it on the partition. Now it is dead-lettered as ``invalid_notice`` and nothing is sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bastionary.dunning.delivery import INVALID_NOTICE, Notifier
from bastionary.dunning.notify.email import SmtpConfig
from tests.notices import dunning_notice
from tests.smtp_sink import SmtpSink, TrailStore, start_sink


@pytest.fixture
def plain_smtp():
    sink = SmtpSink()
    controller = start_sink(sink)
    yield sink, controller.port
    controller.stop()


async def _deliver(smtp: SmtpConfig, notice: dict[str, Any]):
    body = json.dumps({"type": "bastionary.dunning.step.v1", "id": notice["notice_id"], "data": notice}).encode()
    dead: list[tuple[str, str]] = []

    async def dead_letter(value: bytes, code: str, message: str) -> None:
        dead.append((code, message))

    store = TrailStore()
    notifier = Notifier(store, None, smtp, dead_letter)
    try:
        outcomes = await notifier.handle(body)
    finally:
        await notifier.close()
    return outcomes, dead, store


async def test_smtp_tls_against_a_plain_server_fails_at_once_naming_the_setting(plain_smtp):
    sink, port = plain_smtp
    smtp = SmtpConfig(
        "127.0.0.1",
        port,
        "billing@bastionary.example",
        use_tls=True,
        max_attempts=4,
        backoff_base=0.01,
        backoff_cap=0.02,
    )
    [outcome], dead, store = await _deliver(smtp, dunning_notice(["email"]))
    assert (outcome.ok, outcome.attempts) == (False, 1)  # the next attempt would meet the same greeting
    assert "BASTIONARY_SMTP_TLS=true" in outcome.reason and "BASTIONARY_SMTP_STARTTLS=true" in outcome.reason
    assert [row.kind for row in store.trail] == ["attempt", "delivery_failed"]
    assert [code for code, _ in dead] == ["email_delivery_failed"]
    assert "BASTIONARY_SMTP_TLS" in dead[0][1]
    assert sink.received == []


@pytest.mark.parametrize(
    "wrong",
    [{"step": 0}, {"step": -1}, {"step": 70000}, {"step": 1.5}, {"step": None}, {"action": 7}, {"action": None}],
    ids=["step-0", "step-negative", "step-beyond-uint16", "step-fraction", "step-null", "action-number", "action-null"],
)
async def test_a_notice_whose_step_or_action_cannot_be_stored_is_dead_lettered_unsent(plain_smtp, wrong):
    sink, port = plain_smtp
    smtp = SmtpConfig("127.0.0.1", port, "billing@bastionary.example", backoff_base=0.01, backoff_cap=0.02)
    outcomes, dead, store = await _deliver(smtp, dunning_notice(["email"], **wrong))
    assert outcomes == []
    assert [code for code, _ in dead] == [INVALID_NOTICE]
    assert store.trail == []
    assert sink.received == []  # not emailed before a write that would stop the worker


async def test_a_well_formed_notice_is_still_delivered(plain_smtp):
    sink, port = plain_smtp
    smtp = SmtpConfig("127.0.0.1", port, "billing@bastionary.example", backoff_base=0.01, backoff_cap=0.02)
    [outcome], dead, _ = await _deliver(smtp, dunning_notice(["email"], step=65535))
    assert outcome.ok and dead == []
    assert [recipients for _, recipients, _ in sink.received] == [["ap@acme.example"]]
