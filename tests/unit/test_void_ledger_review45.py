"""A voided grant's ledger adds up to its balance (chdb in a child process: one per data
directory). A void is stored with amount 0 and no currency, since invoices for periods before
its effective time may still draw on the grant after it arrives; the ledger (``credits ledger``
and ``GET /v1/customers/{id}/credits/ledger``) shows what the void took: the remainder after
every stored invoice's draws, once the void is in effect."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

_SCENARIO = """
import json, sys, tempfile
from datetime import UTC, datetime
from decimal import Decimal as D
from types import SimpleNamespace
from click.testing import CliRunner
import bastionary.cli.billing as billing
from bastionary.cli.main import cli
from bastionary.rating.rows import LedgerRow
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import insert_rows, open_client
from bastionary.storage.reports import InvoiceReports
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.worker.api import reads

def t(month, day=1): return datetime(2024, month, day, tzinfo=UTC)
FUTURE = datetime(2099, 1, 1, tzinfo=UTC)
COLUMNS = ("invoice_id", "customer_id", "currency", "kind", "period_start", "period_end", "usage_cutoff",
           "issued_at", "due_at", "subtotal", "credits_applied", "total", "status", "document", "published")
rows = []
def row(kind, grant, amount=D(0), currency="", effective=t(1), expires=None, invoice="", price=None):
    n = len(rows) + 1
    rows.append(LedgerRow(f"m{n:03}", kind, grant, "c", amount, currency, 100, effective, expires, invoice,
                          datetime(2024, 1, 1, 0, n, tzinfo=UTC), price, "pay-1" if price else ""))
def grant(g, amount, kind="granted", **kw): row(kind, g, D(amount), "USD", **kw)
def void(g, at): row("voided", g, effective=at)
def draw(g, amount, kind="applied", invoice="inv-1"): row(kind, g, D(amount), "USD", invoice=invoice)

# The January invoice (period end Feb 1) is stored after the void of Feb 10 arrived.
grant("partly-used", "40.00"); void("partly-used", t(2, 10)); draw("partly-used", "35.70")
grant("unused", "10.00"); void("unused", t(2))
grant("used-up", "20.00"); draw("used-up", "20.00"); void("used-up", t(2))
grant("void-ahead", "15.00"); draw("void-ahead", "5.00"); void("void-ahead", FUTURE)
grant("voided-twice", "30.00"); draw("voided-twice", "5.00"); void("voided-twice", t(3)); void("voided-twice", t(2))
grant("bought", "50.00", kind="purchased", price=D("45.00")); draw("bought", "10.00"); void("bought", t(2))
grant("lapsed", "12.00", expires=t(1, 15)); draw("lapsed", "12.00", kind="expired"); void("lapsed", t(2))
grant("expired-unlapsed", "8.00", expires=t(1, 15)); void("expired-unlapsed", t(2))
grant("crash-drawn", "9.00"); draw("crash-drawn", "9.00", invoice="inv-never-stored"); void("crash-drawn", t(2))
void("not-a-grant", t(2))

with tempfile.TemporaryDirectory() as tmp:
    client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
    ClickHouseUsageStore(client).migrate()
    ClickHouseBillingStore(client).insert_ledger(rows)
    invoice = ("inv-1", "c", "USD", "period", t(1), t(2), t(2), t(2), t(2), D(100), D(0), D(100), "finalized", "{}", 1)
    insert_rows(client, "invoices", [invoice], COLUMNS)

    backend = SimpleNamespace(reader=client, billing_reads=lambda: ClickHouseBillingStore(client))
    request = SimpleNamespace(query={})
    billing.settings_or_exit = lambda: None
    billing.reader_client = lambda settings: client
    runner = CliRunner()
    cli_ledger = runner.invoke(cli, ["credits", "ledger", "c", "--format", "json"], catch_exceptions=False)
    ahead = [r for r in InvoiceReports(client).ledger("c", at=datetime(2100, 1, 1, tzinfo=UTC))
             if r[2] == "void-ahead" and r[1] == "voided"]
    print(json.dumps({
        "api_ledger": reads.credit_ledger(backend, request, "c")["movements"],
        "api_balance": reads.credit_balance(backend, request, "c")["grants"],
        "cli_ledger": json.loads(cli_ledger.output),
        "void_ahead_in_2100": [[str(r[3]), r[4]] for r in ahead],
    }))
"""


@pytest.fixture(scope="module")
def answers() -> dict[str, list]:
    done = subprocess.run([sys.executable, "-c", _SCENARIO], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, list] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _voids(movements: list[dict]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for m in movements:
        if m["kind"] == "voided":
            out.setdefault(m["grant_id"], []).append((m["amount"], m["currency"]))
    return out


def test_a_void_shows_what_it_took_from_its_grant(answers):
    assert _voids(answers["api_ledger"]) == {
        "partly-used": [("4.30", "USD")],  # drawn by an invoice stored after the void arrived
        "unused": [("10.00", "USD")],
        "used-up": [("0.00", "USD")],
        "void-ahead": [("0.00", "USD")],  # not in effect yet: nothing taken
        "voided-twice": [("0.00", "USD"), ("25.00", "USD")],  # the earliest void takes it, once
        "bought": [("40.00", "USD")],
        "lapsed": [("0.00", "USD")],  # its remainder expired before the void
        "expired-unlapsed": [("8.00", "USD")],  # a void wins over an expiry no invoice lapsed yet
        "crash-drawn": [("9.00", "USD")],  # a draw whose invoice was never stored counts for nothing
        "not-a-grant": [("0", "")],  # no grant of the customer: nothing to take
    }


def test_each_grants_ledger_rows_add_up_to_its_balance(answers):
    sign = {"granted": 1, "purchased": 1, "applied": -1, "expired": -1, "voided": -1}
    balance = {g["grant_id"]: g for g in answers["api_balance"]}
    assert len(balance) == 9
    for grant_id, line in balance.items():
        rows = [m for m in answers["api_ledger"] if m["grant_id"] == grant_id]
        assert sum(sign[m["kind"]] * Decimal(m["amount"]) for m in rows) == Decimal(line["remaining"]), grant_id
    assert balance["void-ahead"]["status"] == "active" and balance["void-ahead"]["remaining"] == "10.00"


def test_a_void_ahead_takes_the_remainder_once_in_effect(answers):
    assert [[Decimal(amount), currency] for amount, currency in answers["void_ahead_in_2100"]] == [[Decimal(10), "USD"]]


def test_the_cli_prints_the_ledger_the_api_answers(answers):
    assert answers["cli_ledger"] == answers["api_ledger"]
