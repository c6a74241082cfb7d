"""A percentage price's events, kept in ``invoice_lines.events`` (and span by span in
``window_events``) and read back by ``ClickHouseBillingStore.billed``: a rate changed in the
catalog does not reach back to a period whose usage did not move, one event more (of no value)
is still billed, and so are events of no value that moved between two segments of one plan.
The real store on migrated chdb tables, in a child process (one database directory per
process); no broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import asyncio, json, tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.metering.meters import Aggregation, Meter
from bastionary.metering.ports import RollupRow
from bastionary.rating.plans import Plan
from bastionary.rating.rows import SubscriptionRow
from bastionary.rating.rater import Rater
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.diagnostics import seed_rating_inputs
from bastionary.storage.usage import ClickHouseUsageStore

JAN, FEB, MAR, APR = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4))
GRACE = timedelta(hours=1)
PAYMENTS = Meter(key="payments", event_type="payment", aggregation=Aggregation.SUM, value_property="$.amount")
RECEIVED = datetime(2023, 12, 1, tzinfo=UTC)


def plan(rate):
    price = {"key": "fees", "model": "percentage", "meter": "payments", "rate": rate, "fixed_amount": "0.30"}
    return Plan.model_validate({"key": "pay", "currency": "USD", "billing_interval": "P1M", "prices": [price]})


def payments(value, events, time, ingested):
    zero = (datetime(1970, 1, 1, tzinfo=UTC), Decimal(0))
    return RollupRow("payments", "cust-1", "", {}, time, ingested, Decimal(value), events, None, [], zero)


client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseBillingStore(client)
subscription = SubscriptionRow("create-1", "created", "sub-1", "cust-1", "pay", JAN, None, JAN, RECEIVED, "")
seed_rating_inputs(client, [subscription], [payments(10000, 1, datetime(2024, 1, 10, tzinfo=UTC), JAN + timedelta(days=9))], [])


async def publish(role, key, value):
    delivered = asyncio.get_running_loop().create_future()
    delivered.set_result(None)
    return delivered


async def rate(rate, now):
    return (await Rater(store, [plan(rate)], [PAYMENTS], GRACE, publish).run_once(now)).invoices


def adjusting(invoices):
    return [
        [line["amount"], line["quantity"]] for i in invoices for line in i["lines"] if line.get("adjusts_period_start")
    ]


out = {}
out["january"] = [i["subtotal"] for i in asyncio.run(rate("0.029", FEB + 2 * GRACE))]
out["billed_after_january"] = {k: [str(q), str(a), e] for (_, k), (q, a, e, _) in store.billed("sub-1").items()}
# The usage line's span (invoice_lines.windows), as the store reads it back.
out["spans_after_january"] = [[str(v) for v in w] for w in store.billed("sub-1")[(JAN, "pay:fees")].windows]
# The rate goes to 3.9%: January's usage did not move, so February's invoice leaves it alone.
out["february_adjusts"] = adjusting(asyncio.run(rate("0.039", MAR + 2 * GRACE)))
# A payment of no value, ingested late: January's quantity stays, its events do not.
client.insert("usage_rollup_1m", [payments(0, 1, datetime(2024, 1, 20, tzinfo=UTC), MAR + 3 * GRACE)],
              column_names=RollupRow._fields)
out["march_adjusts"] = adjusting(asyncio.run(rate("0.039", APR + 2 * GRACE)))
out["events_of_january"] = store.billed("sub-1")[(JAN, "pay:fees")].events
# A line stored before invoice_lines.events (NULL): its key's events are unknown.
client.command("ALTER TABLE invoice_lines UPDATE events = NULL WHERE line_no = 0 SETTINGS mutations_sync = 1")
out["events_unknown"] = store.billed("sub-1")[(JAN, "pay:fees")].events
print(json.dumps(out))
"""


def test_a_rate_changed_in_the_catalog_leaves_periods_alone_and_an_event_more_is_billed():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["january"] == ["290.30"]  # 10,000 x 2.9% + 0.30 x 1 event
    assert out["billed_after_january"] == {"pay:fees": ["10000.000000000", "290.300000000", 1]}
    assert out["spans_after_january"] == [
        ["2024-01-01 00:00:00+00:00", "2024-02-01 00:00:00+00:00", "10000", "290.3", "1"]
    ]
    assert out["february_adjusts"] == []  # before invoice_lines.events: +100.00 for January
    # The zero payment's 0.30, priced whole at today's rate (the documented limit of late usage):
    # 10,000 x 3.9% + 0.30 x 2 = 390.60, less 290.30 billed.
    assert out["march_adjusts"] == [["100.30", "0"]]
    assert out["events_of_january"] == 2
    assert out["events_unknown"] is None


_MOVED = r"""
import asyncio, json, tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.metering.meters import Aggregation, Meter
from bastionary.metering.ports import RollupRow
from bastionary.rating.plans import Plan
from bastionary.rating.rows import SubscriptionRow
from bastionary.rating.rater import Rater
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.diagnostics import seed_rating_inputs
from bastionary.storage.usage import ClickHouseUsageStore

JAN, FEB, MAR, APR = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4))
GRACE = timedelta(hours=1)
PAYMENTS = Meter(key="payments", event_type="payment", aggregation=Aggregation.SUM, value_property="$.amount")
RECEIVED = datetime(2023, 12, 1, tzinfo=UTC)
CAPPED = {"key": "fees", "model": "percentage", "meter": "payments", "rate": "0.029", "fixed_amount": "0.30",
          "max_amount": "0.50"}
PER_UNIT = {"key": "fees", "model": "per_unit", "meter": "payments", "unit_amount": "0.05"}
PLANS = [
    Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", "prices": [price]})
    for key, price in (("a", CAPPED), ("b", PER_UNIT))
]


def on(day):
    return datetime(2024, 2, day, tzinfo=UTC)


def change(n, plan, day, received):
    return SubscriptionRow(f"change-{n}", "changed", "sub-1", "cust-1", plan, on(day), None, on(day), received, "")


def payment(day):
    zero = (datetime(1970, 1, 1, tzinfo=UTC), Decimal(0))
    return RollupRow("payments", "cust-1", "", {}, on(day), on(day), Decimal(0), 1, None, [], zero)


client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseBillingStore(client)
created = SubscriptionRow("create-1", "created", "sub-1", "cust-1", "a", JAN, None, JAN, RECEIVED, "")
seed_rating_inputs(
    client,
    [created, change(1, "b", 10, RECEIVED), change(2, "a", 20, RECEIVED)],
    [payment(day) for day in (2, 3, 9, 19, 25)],
    [],
)


async def publish(role, key, value):
    delivered = asyncio.get_running_loop().create_future()
    delivered.set_result(None)
    return delivered


def rate(now):
    return asyncio.run(Rater(store, PLANS, [PAYMENTS], GRACE, publish).run_once(now)).invoices


def spans():
    return [[w.start.day, w.end.day, str(w.amount), w.events] for w in store.billed("sub-1")[(FEB, "a:fees")].windows]


out = {"february": [i["subtotal"] for i in rate(MAR + 2 * GRACE) if i["period_start"] == FEB.isoformat()]}
out["spans_after_february"] = spans()
# The changes were two days earlier: the payment of the 9th is b's now, the 19th's a's.
client.insert("subscriptions", [change(3, "b", 8, MAR + GRACE), change(4, "a", 18, MAR + GRACE)],
              column_names=SubscriptionRow._fields)
out["march_adjusts"] = [
    line["amount"] for i in rate(APR + 2 * GRACE) for line in i["lines"] if line.get("adjusts_period_start")
]
out["spans_after_march"] = spans()
out["february_billed"] = str(store.billed("sub-1")[(FEB, "a:fees")].amount)
# Lines stored before window_events: their spans' events are unknown.
client.command("ALTER TABLE invoice_lines UPDATE window_events = [] WHERE 1 SETTINGS mutations_sync = 1")
out["events_unknown"] = [w.events for w in store.billed("sub-1")[(FEB, "a:fees")].windows]
print(json.dumps(out))
"""


def test_events_of_no_value_moved_between_two_segments_of_one_plan_are_billed():
    """February: a (a capped percentage: 2.9% + 0.30 an event, at most 0.50 a segment) 1-10,
    b 10-20, a again from the 20th; payments of no value on the 2nd, 3rd and 9th (0.50, capped),
    19th (b's) and 25th (0.30): 0.80. Both changes turn out two days earlier (received in
    March): a holds the 2nd and 3rd (0.50), the 19th (0.30) and the 25th (0.30), 1.10, with
    its usage (0) and events (4) summed unmoved. Before window_events it stayed billed 0.80."""
    done = subprocess.run([sys.executable, "-c", _MOVED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["february"] == ["0.80"]
    assert out["spans_after_february"] == [[1, 10, "0.5", 3], [20, 1, "0.3", 1]]
    assert out["march_adjusts"] == ["0.30"]
    assert out["spans_after_march"] == [[1, 8, "0.5", 2], [18, 20, "0.3", 1], [20, 1, "0.3", 1]]
    assert out["february_billed"] == "1.100000000"
    assert out["events_unknown"] == [None, None, None]
