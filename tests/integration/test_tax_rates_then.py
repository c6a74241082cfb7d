"""The rates an earlier period's invoice applied, read back from ClickHouse
(``ClickHouseBillingStore.rates_then``): what a line adjusting that period is taxed at. chdb in
a child process (one database directory per process); no broker."""

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

from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore

client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseBillingStore(client)
VAT = {"key": "vat", "name": "VAT 19%", "rate": "0.19", "inclusive": False}
LINE = VAT | {"taxable": "10.00", "amount": "1.90"}


def invoice(invoice_id, subscription, kind, month, subtotal, **document):
    start = datetime(2024, month, 1, tzinfo=timezone.utc)
    data = {"invoice_id": invoice_id, "subscription_id": subscription, "kind": kind,
            "period_start": start.isoformat(), "subtotal": subtotal} | document
    return (invoice_id, "cust-1", subscription, kind, start, Decimal(subtotal), json.dumps(data), 0)


client.insert(
    "invoices",
    [
        invoice("jan", "sub-1", "period", 1, "10.00", tax_lines=[LINE], tax_rates=[VAT]),
        invoice("feb", "sub-1", "period", 2, "0.00", tax_lines=[], tax_rates=[VAT]),  # known though zero
        invoice("mar", "sub-1", "period", 3, "10.00", tax_lines=[LINE | {"rate": "0.25"}]),  # rated before tax_rates
        invoice("apr", "sub-1", "period", 4, "0.00", tax_lines=[]),  # before tax_rates, zero: unknown
        invoice("may", "sub-1", "period", 5, "10.00", tax_lines=[], tax_rates=[]),  # exempt then
        invoice("jun", "sub-1", "advance", 6, "10.00", tax_lines=[LINE], tax_rates=[VAT]),  # not a period's
        invoice("other", "sub-2", "period", 1, "10.00", tax_lines=[LINE], tax_rates=[VAT]),
    ],
    column_names=("invoice_id", "customer_id", "subscription_id", "kind", "period_start", "subtotal", "document", "published"),
)
found = store.rates_then("cust-1", "sub-1")
print(json.dumps({start.isoformat()[:7]: [(r.key, str(r.rate)) for r in rates] for start, rates in sorted(found.items())}))
"""


def test_each_invoiced_period_names_the_rates_its_invoice_applied():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "2024-01": [["vat", "0.19"]],
        "2024-02": [["vat", "0.19"]],
        "2024-03": [["vat", "0.25"]],
        "2024-05": [],
    }


_FIRST_BILLED = r"""
import json, tempfile
from datetime import datetime, timezone
from decimal import Decimal

from bastionary.storage.billing import LINE_COLUMNS, ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore

client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseBillingStore(client)
FEB = datetime(2024, 2, 1, tzinfo=timezone.utc)


def vat(rate):
    return [{"key": "vat", "name": f"VAT {rate}", "rate": rate, "inclusive": False}]


def invoice(invoice_id, subscription, kind, issued_day, rates, subtotal="10.00"):
    issued = datetime(2024, 2, issued_day, tzinfo=timezone.utc)
    data = {"invoice_id": invoice_id, "subscription_id": subscription, "kind": kind, "subtotal": subtotal,
            "tax_lines": []}
    if rates is not None:
        data["tax_rates"] = rates
    return (invoice_id, "cust-1", subscription, kind, FEB, issued, Decimal(subtotal), json.dumps(data), 0)


def line(invoice_id, n, subscription, key, amount):
    return (invoice_id, n, "cust-1", subscription, key, key, "", key, Decimal(1), Decimal(amount), "USD", FEB, None, [], [])


client.insert(
    "invoices",
    [
        invoice("adv-feb10", "sub-1", "advance", 10, vat("0.25")),  # a plan change's: bills b:base first
        invoice("jan", "sub-1", "period", 1, vat("0.19")),  # bills a:base for February, first
        invoice("feb", "sub-1", "period", 29, vat("0.30")),  # later: refunds and more of a:base
        invoice("old", "sub-1", "period", 2, None, "0.00"),  # before tax_rates, zero, no tax lines: unknown
        invoice("other", "sub-2", "period", 1, vat("0.07")),
    ],
    column_names=("invoice_id", "customer_id", "subscription_id", "kind", "period_start", "issued_at", "subtotal",
                  "document", "published"),
)
client.insert(
    "invoice_lines",
    [
        line("jan", 0, "sub-1", "a:base", "30.00"),
        line("adv-feb10", 0, "sub-1", "b:base", "20.69"),
        line("adv-feb10", 1, "sub-1", "a:base", "-20.69"),  # a refund bills nothing
        line("feb", 0, "sub-1", "b:base", "-15.52"),
        line("feb", 1, "sub-1", "c:base", "5.00"),
        line("old", 0, "sub-1", "d:base", "5.00"),  # first billed where the rates are unknown
        line("feb", 2, "sub-1", "d:base", "5.00"),
        line("other", 0, "sub-2", "a:base", "30.00"),
    ],
    column_names=LINE_COLUMNS,
)
found = store.rates_first_billed("cust-1", "sub-1")
print(json.dumps({key: [str(r.rate) for r in rates] for (start, key), rates in sorted(found.items())}))
"""


def test_a_fee_names_the_rates_of_the_first_invoice_that_billed_it():
    done = subprocess.run([sys.executable, "-c", _FIRST_BILLED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "a:base": ["0.19"],
        "b:base": ["0.25"],
        "c:base": ["0.30"],
    }
