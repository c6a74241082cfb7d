"""The dunning trail's readers on real tables: a suspension applied again after a chargeback is
read as a suspension by the dunning store's loader and by both entitlements queries, and the
``minimum`` rows come back from the store so the policy's clock stands still below the minimum.
The engine decides, the store records and loads, as the worker does (chdb in a child process:
one database directory per process; no broker)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from bastionary.dunning.engine import advance, overdue_for
from bastionary.dunning.policy import Policy
from bastionary.dunning.ports import PaymentRow, ReceivableRow
from bastionary.storage.client import open_client
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.entitlements import ClickHouseEntitlementStore
from bastionary.storage.usage import ClickHouseUsageStore

DUE = datetime(2026, 3, 1, tzinfo=timezone.utc)
POLICY = Policy.model_validate({"key": "standard", "min_amount_due": "1.00", "steps": [
    {"after": "P1D", "action": "remind"}, {"after": "P7D", "action": "remind"},
    {"after": "P14D", "action": "final_notice"}, {"after": "P21D", "action": "suspend"},
    {"after": "P30D", "action": "mark_uncollectible"}]})
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseDunningStore(client)
entitlements = ClickHouseEntitlementStore(client, [])
store.insert_receivables([
    ReceivableRow(i, c, "pro", "USD", Decimal(100), DUE, DUE, DUE, DUE, DUE) for i, c in (("inv-1", "c1"), ("inv-2", "c2"))
])
out = {}


def day(n):
    return DUE + timedelta(days=n)


def pay(invoice, customer, kind, payment_id, amount, at):
    store.insert_payments([PaymentRow(f"e-{kind}-{payment_id}", kind, payment_id, invoice, customer, Decimal(amount),
                                      "USD", at, "", at)])


def run(name, n):
    now, decided = day(n), []
    for case in store.cases():
        decided += [(case, r) for r in advance(case, POLICY, now)]
    store.store_decisions(decided, now)
    cases = {c.invoice.invoice_id: c for c in store.cases()}
    out[name] = {
        "decided": [[c.invoice.invoice_id, r.kind, r.action, r.detail] for c, r in decided],
        "loaded": {i: c.suspended for i, c in cases.items()},
        "overdue_days": {i: overdue_for(c, now) / timedelta(days=1) for i, c in cases.items()},
        "entitlements": [entitlements.suspended("c1"), entitlements.suspended("c2")],
        "transitions": entitlements.suspension_histories(["c1", "c2"]),
    }


run("day 1.5", 1.5)
pay("inv-2", "c2", "succeeded", "p-2", "99.50", day(2))  # below the minimum
run("day 2", 2)
run("day 22", 22)
pay("inv-1", "c1", "succeeded", "p-1", "100", day(25))
run("day 25", 25)
pay("inv-1", "c1", "refunded", "cb-1", "100", day(40))  # a chargeback
pay("inv-2", "c2", "refunded", "r-2", "49.50", day(40))  # 50.00 owed again
run("day 40", 40)
pay("inv-1", "c1", "succeeded", "p-3", "100", day(41))
run("day 41", 41)
pay("inv-1", "c1", "refunded", "cb-2", "100", day(42))  # charged back again
run("day 42", 42)
run("day 46", 46)  # 30 days owed (22 settled): marked uncollectible
out["funnel"] = store.funnel(7)
pay("inv-1", "c1", "succeeded", "p-4", "100", day(47))
run("day 47", 47)
pay("inv-1", "c1", "refunded", "cb-3", "100", day(50))  # paid after the write-off, charged back
run("day 50", 50)
print(json.dumps(out))
"""


@pytest.mark.integration
def test_the_trail_s_readers_agree_on_a_suspension_applied_again_and_on_the_minimum():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [d for d in out["day 2"]["decided"] if d[0] == "inv-2"] == [["inv-2", "minimum", "", "below"]]
    assert out["day 22"]["loaded"] == {"inv-1": True, "inv-2": False}
    assert out["day 22"]["entitlements"] == [True, False]
    assert out["day 25"]["decided"] == [["inv-1", "state", "", "paid"], ["inv-1", "reinstated", "", "paid"]]
    assert out["day 25"]["entitlements"] == [False, False]
    day40 = out["day 40"]
    assert day40["decided"] == [
        ["inv-1", "state", "", "overdue"],
        ["inv-1", "notice", "suspend", "resuspended"],
        ["inv-2", "minimum", "", "above"],  # not every step at once: 2 days counted, not 40
    ]
    assert day40["loaded"] == {"inv-1": True, "inv-2": False}
    assert day40["entitlements"] == [True, False]
    assert day40["transitions"] == {"c1": ["suspended", "reinstated", "suspended"]}
    assert day40["overdue_days"] == {"inv-1": 25.0, "inv-2": 2.0}
    day41 = out["day 41"]
    assert day41["decided"] == [["inv-1", "state", "", "paid"], ["inv-1", "reinstated", "", "paid"]]
    assert day41["loaded"] == {"inv-1": False, "inv-2": False}
    assert day41["entitlements"] == [False, False]
    assert day41["transitions"] == {"c1": ["suspended", "reinstated", "suspended", "reinstated"]}
    assert day41["overdue_days"]["inv-2"] == 3.0
    assert out["day 46"]["decided"][:2] == [
        ["inv-1", "notice", "mark_uncollectible", ""],
        ["inv-1", "state", "", "uncollectible"],
    ]
    # The funnel pairs each notice with the first payment in full at or after it, and counts a
    # suspension applied again as no new invoice reaching step 4: (step, action, sent, paid
    # within 7 days, paid ever). Before, step 4 counted inv-1 twice, and step 5 counted it paid
    # by the payment of day 25, three weeks before its notice.
    assert out["funnel"] == [
        [1, "remind", 2, 0, 1],
        [2, "remind", 1, 0, 0],  # inv-2, owing again since day 40
        [4, "suspend", 1, 1, 1],
        [5, "mark_uncollectible", 1, 0, 0],
    ]
    assert out["day 47"]["decided"] == [["inv-1", "state", "", "paid"], ["inv-1", "reinstated", "", "paid"]]
    # Written off, paid, charged back: written off again (not overdue with no step left), and
    # suspended again as after any chargeback.
    assert out["day 50"]["decided"] == [
        ["inv-1", "state", "", "uncollectible"],
        ["inv-1", "notice", "suspend", "resuspended"],
    ]
    assert out["day 50"]["entitlements"] == [True, False]
