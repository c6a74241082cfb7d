"""What the billing, dunning and override parsers accept lands in ClickHouse unchanged.

The property tests in tests/unit/test_intake_parsers.py check accepted values against the
documented bounds; here the same generated events, once accepted, are written through the
worker's own row builders and stores into freshly migrated tables (chdb, in a child process:
chdb allows one database directory per process) and read back equal. Also: the exceptions
the real client raises for values a column cannot hold are classified as the record's, and a
closed client as infrastructure. No broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, sys, tempfile
from datetime import datetime, timezone
from decimal import Decimal

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, ".")
from tests.unit import test_intake_parsers as props
from bastionary.catalog import parse_catalog
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.entitlements import ClickHouseEntitlementStore
from bastionary.rating.events import credit_row, subscription_row
from bastionary.worker.intake import is_infrastructure_failure
from bastionary.dunning.events import payment_row, receivable_row, response_row

TABLES = {"subscription": "subscriptions", "credit": "credit_ledger", "invoice": "receivables",
          "payment": "payments", "response": "dunning_events", "override": "entitlement_overrides"}
RECEIVED = datetime(2026, 3, 5, 12, tzinfo=timezone.utc)

tmp = tempfile.mkdtemp()
client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
billing, dunning = ClickHouseBillingStore(client), ClickHouseDunningStore(client)
overrides = ClickHouseEntitlementStore(client, [])
stored = {name: 0 for name in TABLES}


def ms(moment):
    # DateTime64(3): kept to the millisecond, read back as naive UTC.
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def store(name, result):
    if name == "subscription":
        envelope, kind, data = result
        row = subscription_row(envelope, kind, data, RECEIVED)
        billing.insert_subscription_events([row])
        return row, "SELECT event_id, event_type, subscription_id, customer_id, plan, start, billing_anchor, effective_at, received_at, billing_email FROM subscriptions"
    if name == "credit":
        envelope, kind, data = result
        row = credit_row(envelope, kind, data, RECEIVED)
        billing.insert_ledger([row])
        return row, "SELECT movement_id, kind, grant_id, customer_id, amount, currency, priority, effective_at, expires_at, invoice_id, recorded_at FROM credit_ledger"
    if name == "invoice":
        row = receivable_row(result, RECEIVED)
        dunning.insert_receivables([row])
        return row, "SELECT invoice_id, customer_id, plan, currency, total, issued_at, due_at, period_start, period_end, received_at FROM receivables"
    if name == "payment":
        envelope, kind, data = result
        row = payment_row(envelope, kind, data, data.customer_id or "cust-1", data.currency or "USD", RECEIVED)
        dunning.insert_payments([row])
        return row, "SELECT event_id, kind, payment_id, invoice_id, customer_id, amount, currency, paid_at, reason, received_at FROM payments"
    if name == "response":
        envelope, kind, data = result
        trail = response_row(envelope, kind, data, "cust-1")
        dunning.insert_trail([trail])
        row = (trail.event_id, trail.invoice_id, trail.action, trail.channel, trail.detail, trail.at, trail.until)
        return row, "SELECT event_id, invoice_id, action, channel, detail, at, until FROM dunning_events"
    overrides.insert_override(result)
    row = (result.event_id, result.override_id, result.customer_id, result.feature, result.effective_at,
           result.expires_at, result.limit, result.limit_delta, None if result.enabled is None else int(result.enabled))
    return row, ("SELECT event_id, override_id, customer_id, feature, effective_at, expires_at, limit_value, limit_delta,"
                 " enabled FROM entitlement_overrides")


def same(written, read):
    if isinstance(written, datetime):
        return read == ms(written)
    if isinstance(written, Decimal):
        return read is not None and Decimal(read) == written
    if isinstance(written, bool):
        return read == int(written)
    return read == written


def lands(name):
    @settings(max_examples=int(sys.argv[1]), deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data(), latest=props.latest_times)
    def check(data, latest):
        result = props.outcome(name, data.draw(props.mutated(name)), latest)
        if isinstance(result, Exception) or result is None:
            return
        client.command(f"TRUNCATE TABLE {TABLES[name]}")
        row, sql = store(name, result)
        (read,) = client.query(sql).result_rows
        assert all(same(w, r) for w, r in zip(row, read)), (name, row, read)
        stored[name] += 1

    return check


for name in TABLES:
    lands(name)()

# The edges themselves, written and read back.
FIRST, LAST = "1970-01-01T00:00:00Z", "2105-12-31T23:59:59.999Z"
DROP, w = props.DROP, props.with_data
EDGES = [
    ("subscription", w("subscription", {"time": FIRST}, start=FIRST, billing_anchor=LAST, subscription_id="s" * 256,
                       customer_id="\u00e9" * 256, billing_email="a" * 242 + "@example.com")),
    ("credit", w("credit", {"time": LAST, "id": "i" * 512}, amount="999999999999999999.99", priority=2**31 - 1,
                 effective_at=FIRST, expires_at=LAST)),
    ("credit", w("credit", amount="999999999999999999.999", currency="BHD", priority=0)),
    ("invoice", w("invoice", total="999999999999999999", currency="JPY", issued_at=FIRST, due_at=LAST,
                  period_start=FIRST, period_end=LAST)),
    ("payment", w("payment", amount="0.01", paid_at=LAST, reason="r" * 2048, customer_id="")),
    ("response", w("response", {"time": FIRST}, promised_by=LAST, channel="c" * 64, reason="\U0001f600" * 2048)),
    ("override", w("override", limit_delta=DROP, limit="999999999999999999.999999999", effective_at=FIRST,
                   expires_at=LAST)),
    ("override", w("override", limit_delta="-999999999999999999.999999999")),
    ("override", w("override", limit_delta=DROP, enabled=False)),
]
for name, value in EDGES:
    result = props.outcome(name, value)
    assert not isinstance(result, Exception), (name, result)
    client.command(f"TRUNCATE TABLE {TABLES[name]}")
    row, sql = store(name, result)
    (read,) = client.query(sql).result_rows
    assert all(same(w, r) for w, r in zip(row, read)), (name, row, read)
    stored[name] += 1

# The real client on values a column cannot hold: the record's fault, not the infrastructure's.
now = datetime.now(timezone.utc)
failures = {}
for label, row in {
    "int32 overflow": ("e", "granted", "g", "c", Decimal(1), "USD", 2**31, now, None, "", now, None, ""),
    "decimal beyond 38 digits": ("e", "granted", "g", "c", Decimal(10) ** 30, "USD", 1, now, None, "", now, None, ""),
    "lone surrogate": ("e", "granted", "g\ud800", "c", Decimal(1), "USD", 1, now, None, "", now, None, ""),
}.items():
    try:
        billing.insert_ledger([row])
    except Exception as exc:
        failures[label] = [type(exc).__name__, is_infrastructure_failure(exc)]
    else:
        failures[label] = ["stored", None]
client.close()
try:
    billing.insert_ledger([("e", "granted", "g", "c", Decimal(1), "USD", 1, now, None, "", now, None, "")])
except Exception as exc:
    failures["closed client"] = [type(exc).__name__, is_infrastructure_failure(exc)]
print(json.dumps({"stored": stored, "failures": failures}))
"""


def test_accepted_events_land_unchanged_and_storage_errors_are_classified():
    done = subprocess.run([sys.executable, "-c", _SCRIPT, "60"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(count > 0 for count in report["stored"].values()), report["stored"]
    assert report["failures"] == {
        "int32 overflow": ["DataError", False],
        "decimal beyond 38 digits": ["OverflowError", False],
        "lone surrogate": ["UnicodeEncodeError", False],
        "closed client": ["ProgrammingError", True],
    }
