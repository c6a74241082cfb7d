"""Credits, from the forty-sixth session's review: the balance the API shows is what the rater
will draw, and the ledger (``credits ledger``, ``GET /v1/customers/{id}/credits/ledger``)
adds up to it, grant by grant (chdb in a child process: one per data directory). Each test
failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

_SCENARIO = """
import json, tempfile
from datetime import UTC, datetime
from decimal import Decimal as D
from types import SimpleNamespace
from bastionary.rating.rows import LedgerRow
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import insert_rows, open_client
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.worker.api import reads

def t(month, day=1): return datetime(2024, month, day, tzinfo=UTC)
COLUMNS = ("invoice_id", "customer_id", "currency", "kind", "period_start", "period_end", "usage_cutoff",
           "issued_at", "due_at", "subtotal", "credits_applied", "total", "status", "document", "published")
rows = []
def row(kind, grant, amount="0", currency="USD", customer="c", expires=None, invoice="", effective=t(1)):
    n = len(rows) + 1
    rows.append(LedgerRow(f"m{n:03}", kind, grant, customer, D(amount), currency, 100, effective, expires, invoice,
                          datetime(2024, 1, 1, 0, n, tzinfo=UTC)))

# Expired on Jan 15 with no invoice of the customer since (partly drawn by January's, stored before).
row("granted", "lapsed-unbilled", "10.00", expires=t(1, 15)); row("applied", "lapsed-unbilled", "4.00", invoice="inv-dec")
# Expired, and lapsed by an invoice: its stored row is the one shown.
row("granted", "lapsed-billed", "6.00", expires=t(1, 15)); row("expired", "lapsed-billed", "6.00", invoice="inv-jan")
# Expired, then voided: the void takes the remainder, nothing lapses.
row("granted", "expired-voided", "8.00", expires=t(1, 15)); row("voided", "expired-voided", currency="", effective=t(2))
# Expires far ahead: still usable.
row("granted", "later", "3.00", expires=datetime(2099, 1, 1, tzinfo=UTC))
# An id granted again by its own customer: for another amount, and a retried request.
row("granted", "reused", "100.00"); row("applied", "reused", "30.00", invoice="inv-jan"); row("granted", "reused", "500.00")
row("granted", "retried", "20.00"); row("granted", "retried", "20.00")
# An id customer "a" was granted first, granted to "c" later (stored before the intake refused it).
row("granted", "a-s", "50.00", customer="a"); row("granted", "a-s", "70.00")

with tempfile.TemporaryDirectory() as tmp:
    client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
    ClickHouseUsageStore(client).migrate()
    store = ClickHouseBillingStore(client)
    store.insert_ledger(rows)
    invoices = [(i, "c", "USD", "period", t(1), t(2), t(2), t(2), t(2), D(100), D(0), D(100), "finalized", "{}", 1)
                for i in ("inv-dec", "inv-jan")]
    insert_rows(client, "invoices", invoices, COLUMNS)
    backend = SimpleNamespace(reader=client, billing_reads=lambda: store)
    request = SimpleNamespace(query={})
    every = {c: [[g.grant_id, str(g.amount)] for g in gs] for c, gs in store.grants()[0].items()}
    print(json.dumps({
        c: {"ledger": reads.credit_ledger(backend, request, c)["movements"],
            "balance": reads.credit_balance(backend, request, c),
            "customer_read": [[g.grant_id, str(g.amount)] for g in store.grants_as_of(None, c)[0].get(c, [])]}
        for c in ("a", "c")
    } | {"rater": every}))
"""
SIGN = {"granted": 1, "purchased": 1, "credit_note": 1, "carried": 1, "applied": -1, "expired": -1, "voided": -1}


@pytest.fixture(scope="module")
def answers() -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-c", _SCENARIO], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, dict] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _ledger_sums(movements: list[dict]) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for m in movements:
        sums[m["grant_id"]] = sums.get(m["grant_id"], Decimal(0)) + SIGN[m["kind"]] * Decimal(m["amount"])
    return sums


def _remaining(answer: dict) -> dict[str, Decimal]:
    return {g["grant_id"]: Decimal(g["remaining"]) for g in answer["balance"]["grants"]}


def test_a_grant_that_expired_with_no_invoice_since_shows_its_expiry_in_the_ledger(answers):
    """The balance said 0.00 expired; the ledger showed the grant and its draw only, 6.00 left."""
    movements = answers["c"]["ledger"]
    lapsed = [m for m in movements if m["kind"] == "expired" and m["grant_id"] == "lapsed-unbilled"]
    assert [(m["amount"], m["currency"], m["invoice_id"], m["recorded_at"]) for m in lapsed] == [
        ("6.00", "USD", "", "2024-01-15T00:00:00+00:00")
    ]
    assert [m["amount"] for m in movements if m["kind"] == "expired" and m["grant_id"] == "lapsed-billed"] == ["6.00"]
    assert not [m for m in movements if m["kind"] == "expired" and m["grant_id"] in ("expired-voided", "later")]
    assert [m["recorded_at"] for m in movements] == sorted(m["recorded_at"] for m in movements)


def test_a_grant_id_granted_again_neither_replaces_nor_doubles_the_first_grant(answers):
    """A second grant of ``reused`` for 500.00 made the balance 470.00 (the rater drew on
    500.00), and a retried grant of 20.00 showed 40.00 granted in the ledger."""
    assert _remaining(answers["c"])["reused"] == Decimal("70.00")
    assert _remaining(answers["c"])["retried"] == Decimal("20.00")
    assert ["reused", "100.000000000"] in answers["rater"]["c"]
    repeats = [m["amount"] for m in answers["c"]["ledger"] if m["grant_id"] in ("reused", "retried")]
    assert repeats == ["100.00", "30.00", "0.00", "20.00", "0.00"]


def test_a_grant_id_another_customer_holds_is_no_credit_in_the_customer_s_balance(answers):
    """The rater never draws on ``a-s`` for c (a was granted it first), but c's balance (and its
    upcoming invoice) counted 70.00 of it."""
    assert "a-s" not in _remaining(answers["c"])
    assert [g for g, _ in answers["c"]["customer_read"]] == [g for g, _ in answers["rater"]["c"]]
    assert answers["a"]["customer_read"] == [["a-s", "50.000000000"]]
    assert _remaining(answers["a"]) == {"a-s": Decimal("50.00")}


@pytest.mark.parametrize("customer", ["a", "c"])
def test_each_grants_ledger_rows_add_up_to_its_balance(answers, customer):
    answer = answers[customer]
    sums = _ledger_sums(answer["ledger"])
    balance = _remaining(answer)
    assert {g: sums.get(g, Decimal(0)) for g in balance} == balance
    assert all(sums[g] == 0 for g in sums if g not in balance), sums
    available = sum((Decimal(b["available"]) for b in answer["balance"]["balances"]), Decimal(0))
    assert available == sum(sums.values(), Decimal(0))


def test_a_balance_shows_what_an_invoice_can_draw_not_a_remainder_rounded_up():
    """Older data can hold a remainder below one minor unit: of 10.005 USD an invoice draws
    10.00 and the rest lapses, but the balance promised 10.01 (rounded half up)."""
    from datetime import UTC, datetime

    from bastionary.credits.balances import balances
    from bastionary.credits.ledger import Grant, allocate
    from bastionary.storage.reports import balance_rows, grant_row

    moment = datetime(2024, 2, 1, tzinfo=UTC)
    old = Grant("old", "c", Decimal("10.005"), "USD", 1, datetime(2024, 1, 1, tzinfo=UTC))
    dust = Grant("dust", "c", Decimal("0.004"), "USD", 2, datetime(2024, 1, 1, tzinfo=UTC))
    lines = balances([old, dust], {}, moment)
    (drawn,) = allocate([old, dust], {}, Decimal("50.00"), "USD", moment)
    assert [(grant_row(line)["remaining"], line.status) for line in lines] == [("10.00", "active"), ("0.00", "used_up")]
    assert balance_rows(lines)[0]["available"] == str(drawn.amount) == "10.00"
