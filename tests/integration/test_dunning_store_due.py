"""Dunning's store loads what it needs to reckon a chargeback after a note's give-back (the
note's ``given_back`` row): paid 100.00, a note put 30.00 on the balance, a 50.00 chargeback;
50.00 is due (20.00 before). chdb in a child
process (one database directory per process); no broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import tempfile
from datetime import datetime, timezone
from decimal import Decimal

from bastionary.dunning.events import CreditNoteIssuedData, credit_note_rows
from bastionary.dunning.ports import PaymentRow, ReceivableRow
from bastionary.storage.client import open_client
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.usage import ClickHouseUsageStore

AT = datetime(2026, 3, 5, 12, tzinfo=timezone.utc)
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseDunningStore(client)
store.insert_receivables([ReceivableRow("inv-1", "c1", "pro", "USD", Decimal(100), AT, AT, AT, AT, AT)])


def payment(kind, payment_id, amount):
    return PaymentRow(f"e-{kind}-{payment_id}", kind, payment_id, "inv-1", "c1", Decimal(amount), "USD", AT, "", AT)


note = CreditNoteIssuedData.model_validate({"credit_note_id": "cn-1", "invoice_id": "inv-1", "customer_id": "c1",
    "currency": "USD", "amount": "30.00", "reduces_amount_due": "0.00", "refunded": "0.00", "issued_at": AT})
rows = [payment("succeeded", "p-1", "100"), *credit_note_rows("cn-1", note, AT), payment("refunded", "cb-1", "50")]
store.insert_payments(rows + rows)  # a redelivery counts once
(case,) = store.cases()
print(case.amount_due)
"""


def test_the_store_loads_a_notes_give_back_so_a_later_chargeback_is_owed():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "50.000000000"
