"""The credit note store reads what the decision needs from ClickHouse: an invoice voided
through ``billing.payments`` (``bastionary.invoice.voided.v1``, a ``voided`` row of
``payments``) takes no void, and notes only for the prepaid credit it drew, to the balance
(before 2026-12-07 the store did not see the void, so a note reduced what the cancelled
invoice no longer asked, or refunded money); an overpaid invoice that drew credit
refunds at most its total and gives the credit back as credit. chdb in a child process
(one database directory per process); no broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json
import tempfile
from datetime import datetime, timezone
from decimal import Decimal

from bastionary.dunning.ports import PaymentRow
from bastionary.rating.credit_notes import CreditNoteRequest, decide
from bastionary.storage.client import open_client
from bastionary.storage.credit_notes import ClickHouseCreditNoteStore
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.usage import ClickHouseUsageStore

AT = datetime(2026, 11, 1, tzinfo=timezone.utc)
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
INVOICE_COLUMNS = ("invoice_id", "customer_id", "subscription_id", "plan", "currency", "kind", "period_start",
    "period_end", "usage_cutoff", "issued_at", "due_at", "subtotal", "credits_applied", "total", "status",
    "document", "published")


def invoice(invoice_id):  # subtotal 150.00: 50.00 of prepaid credit drawn, 100.00 owed in money
    return (invoice_id, "c1", "sub-1", "pro", "USD", "period", AT, AT, AT, AT, AT, Decimal(150), Decimal(50),
        Decimal(100), "finalized", "{}", 1)


client.insert("invoices", [invoice("inv-void"), invoice("inv-over")], column_names=INVOICE_COLUMNS)
dunning = ClickHouseDunningStore(client)
# As dunning stores a bastionary.invoice.voided.v1 without payment_id: the event id stands in.
voided = PaymentRow("ev-void", "voided", "ev-void", "inv-void", "c1", Decimal(0), "USD", AT, "", AT)
paid = PaymentRow("ev-pay", "succeeded", "pay-1", "inv-over", "c1", Decimal(150), "USD", AT, "", AT)
dunning.insert_payments([voided, voided, paid])

store = ClickHouseCreditNoteStore(client)
out = {"voided": store.standing("inv-void").voided, "over_voided": store.standing("inv-over").voided}
for label, invoice_id, fields in [
    ("void", "inv-void", {"void": True}),
    ("more", "inv-void", {"amount": "50.01"}),
    ("part", "inv-void", {"amount": "30", "refund_to": "payment"}),
    ("overpaid", "inv-over", {"refund_to": "payment"}),
]:
    request = CreditNoteRequest.model_validate(
        {"credit_note_id": label, "invoice_id": invoice_id, "customer_id": "c1"} | fields
    )
    decision = decide("evt", NOW, request, store.standing(invoice_id), NOW)
    out[label] = decision.document
print(json.dumps(out))
"""


def test_the_store_sees_a_payment_system_void_and_an_overpaid_invoice_refunds_at_most_its_total():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["voided"], out["over_voided"]) == (True, False)
    assert out["void"]["rejection"] == "invoice 'inv-void' was voided already"
    assert out["more"]["rejection"] == "amount 50.01 is more than the 50.00 USD still creditable"
    part = out["part"]  # the credit it drew, back to the balance whatever refund_to says
    assert (part["amount"], part["reduces_amount_due"], part["refunded"], part["credited_to_balance"]) == (
        "30.00",
        "0.00",
        "0.00",
        "30.00",
    )
    over = out["overpaid"]
    assert over["status"] == "issued"
    parts = (over["amount"], over["reduces_amount_due"], over["refunded"], over["credited_to_balance"])
    assert parts == ("150.00", "0.00", "100.00", "50.00")
