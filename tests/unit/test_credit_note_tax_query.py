"""Credit notes' tax through ClickHouse (chdb): the store reads the invoice's ``tax_lines`` into
the standing a note is decided against, and ``schemas/README.md``'s "Tax collected per rate"
counts the invoices' tax less what issued notes gave back, so a fully credited invoice has
collected none."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.unit.schema_helpers import readme_blocks

_SCENARIO = """
import json, sys, tempfile
from datetime import UTC, datetime
from decimal import Decimal
from bastionary.rating.credit_notes import CreditNoteRequest, Decision, decide
from bastionary.storage.client import insert_rows, open_client
from bastionary.storage.credit_notes import ClickHouseCreditNoteStore
from bastionary.storage.usage import ClickHouseUsageStore

queries = json.loads(sys.stdin.read())
AT = datetime(2026, 3, 5, 12, tzinfo=UTC)
VAT = {"key": "vat", "name": "VAT 19%", "rate": "0.19", "inclusive": False, "taxable": "100.00", "amount": "19.00"}
COLUMNS = ("invoice_id", "customer_id", "currency", "kind", "period_start", "period_end", "usage_cutoff",
           "issued_at", "due_at", "subtotal", "credits_applied", "total", "status", "document", "published")

with tempfile.TemporaryDirectory() as tmp:
    client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
    ClickHouseUsageStore(client).migrate()
    store = ClickHouseCreditNoteStore(client)
    for invoice, currency in (("inv-1", "USD"), ("inv-2", "USD"), ("inv-3", "EUR")):
        document = json.dumps({"invoice_id": invoice, "tax_lines": [VAT]})
        row = (invoice, "c1", currency, "period", AT, AT, AT, AT, AT, Decimal("100"), Decimal(0), Decimal("119"),
               "finalized", document, 1)
        insert_rows(client, "invoices", [row], COLUMNS)

    def credit(invoice, number, amount=None, legacy=False):
        fields = {} if amount is None else {"amount": amount}
        req = CreditNoteRequest(credit_note_id=f"{invoice}-{number}", invoice_id=invoice, customer_id="c1", **fields)
        decision = decide(f"evt-{invoice}-{number}", AT, req, store.standing(invoice), AT)
        assert decision.issued, decision.document
        if legacy:  # as decided before notes carried their tax
            document = {k: v for k, v in decision.document.items() if k != "tax_lines"}
            decision = Decision(decision.credit_note_id, decision.status, document, decision.credited_to_balance)
        store.store([(f"evt-{invoice}-{number}", req, decision)])
        return decision.document.get("tax_lines")

    out = {"standing": list(store.standing("inv-1").tax_lines), "notes": []}
    for number, amount in enumerate(["33.33", "33.33", "33.34", None]):
        out["notes"].append(credit("inv-1", number, amount))
    credit("inv-2", 0, "33.33")
    credit("inv-3", 0, "50.00", legacy=True)
    out["notes"].append(credit("inv-3", 1))
    out["results"] = [[[str(v) for v in row] for row in client.query(sql).result_rows] for sql in queries]
    print(json.dumps(out))
"""


def _query(title: str) -> str:
    (sql,) = [block for block in readme_blocks("sql") if block.startswith(f"-- {title}")]
    return sql


@pytest.mark.integration
def test_the_tax_collected_is_the_invoices_less_what_the_notes_gave_back():
    queries = [_query("Tax collected per rate"), _query("Invoices credited by notes without tax_lines")]
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO], input=json.dumps(queries), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["standing"] == [
        {"key": "vat", "name": "VAT 19%", "rate": "0.19", "inclusive": False, "taxable": "100.00", "amount": "19.00"}
    ]
    assert [[line["amount"] for line in note] for note in out["notes"]] == [
        ["5.32"],
        ["5.32"],
        ["5.33"],
        ["3.03"],
        ["11.02"],  # the rest of inv-3, after a legacy note of 50.00 (which took 7.98, unrecorded)
    ]
    collected, legacy = out["results"]
    # inv-1 fully credited: none; inv-2: 19.00 - 5.32; inv-3: 19.00 - 11.02, the legacy note counting none
    assert sorted((rate, currency, Decimal(tax)) for rate, currency, tax in collected) == [
        ("vat", "EUR", Decimal("7.98")),
        ("vat", "USD", Decimal("13.68")),
    ]
    assert [(invoice, currency, int(n), Decimal(amount)) for invoice, currency, n, amount in legacy] == [
        ("inv-3", "EUR", 1, Decimal(50))
    ]
