"""Dunning, from the forty-third session's review: a payment_id another invoice's payment has
(another customer's, or the same one with another amount) is refused instead of replacing the
stored payment, a refund beyond what was paid is not dunned beyond the invoice's total, one
resolution ends a dispute sent twice, and a notice the notifier cannot deliver is dead-lettered
instead of stopping the worker. The store's parts on real tables (chdb in a child process: one
database directory per process; no broker)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from bastionary.dunning.delivery import Notifier
from bastionary.dunning.dunner import STEP_TYPE
from bastionary.dunning.engine import Case, InvoiceFacts, advance
from bastionary.dunning.policy import Policy
from tests.notices import dunning_notice
from tests.smtp_sink import TrailStore

ROOT = Path(__file__).resolve().parents[2]
DUE = datetime(2026, 3, 1, tzinfo=UTC)
POLICY = Policy.model_validate(
    {
        "key": "standard",
        "min_amount_due": "1.00",
        "steps": [{"after": "P1D", "action": "remind"}, {"after": "P21D", "action": "suspend"}],
    }
)

_SCRIPT = r"""
import json, tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from bastionary.dunning.engine import advance, paused_at
from bastionary.dunning.policy import Policy
from bastionary.dunning.ports import PaymentRow, ReceivableRow, TrailRow
from bastionary.rating.events import InvalidBillingEvent
from bastionary.storage.client import open_client
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.usage import ClickHouseUsageStore

DUE = datetime(2026, 3, 1, tzinfo=timezone.utc)
POLICY = Policy.model_validate({"key": "standard", "steps": [
    {"after": "P1D", "action": "remind"}, {"after": "P21D", "action": "suspend"}]})
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseDunningStore(client)
store.insert_receivables([ReceivableRow(i, c, "pro", "USD", Decimal(100), DUE, DUE, DUE, DUE, DUE)
                          for i, c in (("inv-a", "a"), ("inv-b", "b"), ("inv-c", "c"), ("inv-d", "d"))])
out = {"refused": []}


def pay(event_id, invoice, customer, payment_id, amount):
    try:
        store.insert_payments([PaymentRow(event_id, "succeeded", payment_id, invoice, customer, Decimal(amount),
                                          "USD", DUE, "", DUE)])
    except InvalidBillingEvent as error:
        out["refused"].append([event_id, error.code, str(error)])


pay("e1", "inv-b", "b", "pi_1", "100")
pay("e2", "inv-a", "a", "pi_1", "1")  # customer a names customer b's payment
pay("e3", "inv-c", "c", "pi_2", "100")
pay("e4", "inv-c", "c", "pi_2", "0.01")  # the same payment_id, another amount
pay("e5", "inv-c", "c", "pi_2", "100.00")  # a true repeat: counts once, refused by nothing
day = lambda n: DUE + timedelta(days=n)
store.insert_trail([
    TrailRow("r1", "inv-d", "d", "response", day(2), action="disputed"),
    TrailRow("r2", "inv-d", "d", "response", day(2) + timedelta(minutes=1), action="disputed"),  # sent again
    TrailRow("r3", "inv-d", "d", "response", day(5), action="dispute_resolved"),
])
cases = {c.invoice.invoice_id: c for c in store.cases()}
out["due"] = {i: f"{c.amount_due.normalize():f}" for i, c in sorted(cases.items())}
out["paused at day 40"] = paused_at(cases["inv-d"], day(40)) is not None
out["decided at day 40"] = [[r.kind, r.action] for r in advance(cases["inv-d"], POLICY, day(40)) if r.kind == "notice"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_payment_id_stored_for_another_invoice_is_refused_and_leaves_that_payment(stored: dict[str, Any]) -> None:
    refused = {event_id: (code, message) for event_id, code, message in stored["refused"]}
    assert refused["e2"][0] == "payment_id_conflict"
    assert "inv-b" not in refused["e2"][1]  # another customer's invoice is not named
    assert stored["due"]["inv-b"] == "0"  # b's payment stands: b is not dunned for it
    assert stored["due"]["inv-a"] == "100"


def test_a_payment_id_repeated_with_another_amount_is_refused_and_a_true_repeat_is_not(
    stored: dict[str, Any],
) -> None:
    assert [event_id for event_id, _, _ in stored["refused"]] == ["e2", "e4"]
    assert stored["refused"][1][1] == "payment_id_conflict"
    assert stored["due"]["inv-c"] == "0"


def test_one_resolution_ends_a_dispute_sent_twice(stored: dict[str, Any]) -> None:
    assert stored["paused at day 40"] is False
    assert stored["decided at day 40"] == [["notice", "suspend"]]


def test_a_refund_beyond_what_was_paid_is_not_dunned_beyond_the_total() -> None:
    case = Case(InvoiceFacts("inv-1", "c1", "pro", "USD", Decimal(100), DUE, DUE, DUE, DUE))
    case.count("succeeded", Decimal(100))
    case.count("refunded", Decimal(5000))
    assert case.amount_due == Decimal(100)
    [notice] = [r for r in advance(case, POLICY, DUE + timedelta(days=2)) if r.data is not None]
    assert notice.data is not None and notice.data["amount_due"] == "100.00"


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"type": STEP_TYPE}),
        orjson.dumps({"type": STEP_TYPE, "data": {"notice_id": "n-1", "channels": ["email"]}}),
        orjson.dumps({"type": STEP_TYPE, "data": {**dunning_notice(["email"]), "channels": "email"}}),
    ],
)
def test_a_notice_the_notifier_cannot_deliver_is_dead_lettered_not_raised(value: bytes) -> None:
    letters: list[tuple[str, str]] = []

    async def dead_letter(original: bytes, code: str, message: str) -> None:
        assert original == value
        letters.append((code, message))

    outcomes = asyncio.run(Notifier(TrailStore(), None, None, dead_letter).handle(value))
    assert outcomes == []
    assert [code for code, _ in letters] == ["invalid_notice"]


def test_a_reinstatement_on_the_notices_topic_is_still_passed_over_quietly() -> None:
    async def dead_letter(original: bytes, code: str, message: str) -> None:
        raise AssertionError(f"dead-lettered: {code} {message}")

    value = orjson.dumps({"type": "bastionary.dunning.reinstated.v1", "data": {"reinstatement_id": "r-1"}})
    assert asyncio.run(Notifier(TrailStore(), None, None, dead_letter).handle(value)) == []
