"""Dunning review 46.

A dispute dated ahead (a customer may date one up to MAX_FUTURE_SKEW ahead) and resolved at
once, the resolution dated before it: read by ``time`` alone the resolution came first and
resolved nothing, and the dispute paused the invoice's dunning for good. It ends the dispute
it was recorded after (chdb in a child process: one database directory per process).

Two workers storing one payment_id at once (payments are keyed by customer: two customers'
payments are read by two workers) both passed the payment_id check, and the one written last
replaced the other: a customer's payment counted on another customer's invoice, and that
customer dunned. The first stored stands and the other is refused as ``payment_id_conflict``.

An SMTP server that lacks what the configuration asks for (``SMTP_STARTTLS=true`` and no
STARTTLS offered, ``SMTP_USERNAME`` set and no AUTH) is a permanent failure of the email
channel: one attempt, then the dead letter naming it. Before, every notice was retried to the
last attempt, the same answer each time, delaying the dead letter and hiding a configuration
error behind "smtp error". Delivered by the real Notifier to a real aiosmtpd on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bastionary.dunning.delivery import Notifier
from bastionary.dunning.notify.email import SmtpConfig
from tests.notices import dunning_notice
from tests.smtp_sink import SmtpSink, TrailStore, start_sink

ROOT = Path(__file__).resolve().parents[2]

_DISPUTES = r"""
import json, tempfile, time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from bastionary.dunning.engine import advance, paused_at
from bastionary.dunning.policy import Policy
from bastionary.dunning.ports import ReceivableRow, TrailRow
from bastionary.storage.client import open_client
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.usage import ClickHouseUsageStore

DUE = datetime(2026, 3, 1, tzinfo=timezone.utc)
T = DUE + timedelta(days=2)
POLICY = Policy.model_validate({"key": "standard", "steps": [
    {"after": "P1D", "action": "remind"}, {"after": "P21D", "action": "suspend"}]})
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseDunningStore(client)
store.insert_receivables([ReceivableRow(i, c, "pro", "USD", Decimal(100), DUE, DUE, DUE, DUE, DUE)
                          for i, c in (("inv-ahead", "a"), ("inv-again", "b"))])


def respond(event_id, invoice, customer, at, action):
    store.insert_trail([TrailRow(event_id, invoice, customer, "response", at, action=action)])
    time.sleep(0.01)  # recorded_at is kept to the millisecond


# The customer's dispute, dated 4 minutes ahead, then the operator's resolution, dated now.
respond("d1", "inv-ahead", "a", T + timedelta(minutes=4), "disputed")
respond("r1", "inv-ahead", "a", T + timedelta(minutes=1), "dispute_resolved")
# A dispute resolved (the resolution sent twice), then a new dispute: that one is open.
respond("d2", "inv-again", "b", T, "disputed")
respond("r2", "inv-again", "b", T + timedelta(days=1), "dispute_resolved")
respond("r3", "inv-again", "b", T + timedelta(days=1, minutes=1), "dispute_resolved")
respond("d3", "inv-again", "b", T + timedelta(days=3), "disputed")
now = DUE + timedelta(days=60)
out = {}
for case in store.cases():
    out[case.invoice.invoice_id] = {
        "paused": paused_at(case, now) is not None,
        "notices": [r.action for r in advance(case, POLICY, now) if r.kind == "notice"],
    }
print(json.dumps(out))
"""


@pytest.fixture
def plain_smtp():
    """A server offering neither STARTTLS nor AUTH."""
    sink = SmtpSink()
    controller = start_sink(sink)
    yield sink, controller.port
    controller.stop()


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"starttls": True}, "STARTTLS"), ({"username": "billing", "password": SecretStr("pw")}, "AUTH")],
    ids=["starttls", "auth"],
)
async def test_a_server_lacking_what_the_config_asks_for_fails_at_once(plain_smtp, settings, named):
    sink, port = plain_smtp
    smtp = SmtpConfig(
        "127.0.0.1", port, "billing@bastionary.example", max_attempts=4, backoff_base=0.01, backoff_cap=0.02, **settings
    )
    dead: list[tuple[str, str]] = []

    async def dead_letter(value: bytes, code: str, message: str) -> None:
        dead.append((code, message))

    notice = dunning_notice(["email"])
    body = json.dumps({"type": "bastionary.dunning.step.v1", "id": notice["notice_id"], "data": notice}).encode()
    store = TrailStore()
    notifier = Notifier(store, None, smtp, dead_letter)
    try:
        [outcome] = await notifier.handle(body)
    finally:
        await notifier.close()
    assert (outcome.ok, outcome.attempts) == (False, 1)  # no retry: the server answers the same each time
    assert named in outcome.reason and "not supported" in outcome.reason
    assert [row.kind for row in store.trail] == ["attempt", "delivery_failed"]
    assert [code for code, _ in dead] == ["email_delivery_failed"]
    assert named in dead[0][1]
    assert sink.received == []


def _run(script: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def disputes() -> dict[str, Any]:
    return _run(_DISPUTES)


def test_a_resolution_dated_before_its_dispute_ends_it(disputes: dict[str, Any]) -> None:
    assert disputes["inv-ahead"] == {"paused": False, "notices": ["suspend"]}


def test_a_dispute_sent_after_the_last_resolution_stays_open(disputes: dict[str, Any]) -> None:
    assert disputes["inv-again"] == {"paused": True, "notices": []}
