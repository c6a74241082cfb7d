"""Dunning finds an invoice the rater stored but whose billing.invoices record it has not read
yet: a payment made the moment the invoice shows in the API is checked against it instead of
being dead-lettered as ``unknown_invoice``. chdb in a child process (one database directory
per process); no broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, tempfile
from datetime import datetime, timezone
from decimal import Decimal

from bastionary.dunning.ports import ReceivableRow
from bastionary.storage.client import open_client
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.usage import ClickHouseUsageStore

AT = datetime(2026, 3, 5, 12, tzinfo=timezone.utc)
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseDunningStore(client)


def lookups(invoice_id):
    pair, customer = store.invoice_currency_customer(invoice_id), store.invoice_customer(invoice_id)
    assert pair is None or pair[1] == customer, (pair, customer)
    return [pair and pair[0], customer, store.invoice_customer_plan(invoice_id)]


report = {"unknown": lookups("inv-1")}
client.insert("invoices", [("inv-1", "cust-1", "gold", "EUR", Decimal("16"), "finalized", 0)],
              column_names=("invoice_id", "customer_id", "plan", "currency", "total", "status", "published"))
report["stored by the rater"] = lookups("inv-1")
store.insert_receivables([ReceivableRow("inv-1", "cust-1", "silver", "EUR", Decimal("16"), AT, AT, AT, AT, AT)])
report["received"] = lookups("inv-1")
print(json.dumps(report))
"""


def test_a_payment_finds_an_invoice_stored_by_the_rater_before_dunning_read_it():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["unknown"] == [None, None, None]
    assert report["stored by the rater"] == ["EUR", "cust-1", ["cust-1", "gold"]]
    # dunning's own copy is read first (its plan differs here only to show which one answered)
    assert report["received"] == ["EUR", "cust-1", ["cust-1", "silver"]]
