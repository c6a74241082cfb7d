"""A fee's spans, kept in ``invoice_lines.windows`` and read back by
``ClickHouseBillingStore.billed``: a share given back is credited at what was paid for that
span, though a newer share of the key was charged at another fee; and a key whose lines were
stored before the column (emptied here) is still credited at the average of what it billed,
as before; and spans a later change moves without moving a share are billed as they are now.
The real store on migrated chdb tables, in a child process (one database directory
per process); no broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_PRELUDE = r"""
import asyncio, json, tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.metering.meters import Aggregation, Meter
from bastionary.rating.plans import Plan
from bastionary.rating.rows import SubscriptionRow
from bastionary.rating.rater import Rater
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore

JAN, FEB, MAR = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3))
GRACE = timedelta(hours=1)
TOKENS = Meter(key="llm_tokens", event_type="tokens", aggregation=Aggregation.SUM, value_property="$.n")


def day(n):
    return datetime(2024, 2, n, tzinfo=UTC)


def plan(key, fee, timing="advance"):
    price = {"key": "base", "model": "flat", "amount": fee, "billing_timing": timing}
    return Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", "prices": [price]})


client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseBillingStore(client)
SUBSCRIPTIONS = ("sub-1", "sub-2")  # sub-2's lines lose their windows, as if stored before them


def event(sub, kind, plan_key, at):
    customer = sub.replace("sub", "cust")
    return SubscriptionRow(f"{sub}-{kind}-{at:%m%d}", kind, sub, customer, plan_key, at, None, at, at, "")


async def publish(role, key, value):
    delivered = asyncio.get_running_loop().create_future()
    delivered.set_result(None)
    return delivered


invoices = []


async def rate(fee_a, now, timing="advance"):
    rater = Rater(store, [plan("a", fee_a, timing), plan("b", "60", timing)], [TOKENS], GRACE, publish)
    invoices.extend((await rater.run_once(now)).invoices)


def february_of(sub):
    total = Decimal(0)
    for invoice in invoices:
        for line in invoice["lines"]:
            start = line.get("service_period_start") or line.get("adjusts_period_start") or invoice["period_start"]
            if invoice["subscription_id"] == sub and start == FEB.isoformat():
                total += Decimal(line["amount"])
    return str(total)


"""

_SCRIPT = (
    _PRELUDE
    + r"""
store.insert_subscription_events([event(sub, "created", "a", JAN) for sub in SUBSCRIPTIONS])
asyncio.run(rate("30", FEB + 2 * GRACE))  # January's invoice bills February's 30.00 in advance
client.command("ALTER TABLE invoice_lines UPDATE windows = [] WHERE subscription_id = 'sub-2' SETTINGS mutations_sync = 1")
out = {"windows_known": {sub: store.billed(sub)[(FEB, "a:base")].windows is not None for sub in SUBSCRIPTIONS}}
# The catalog raises a to 50.00. a -> b on 10 February, b -> a on 20 February, each rated on
# time; then a cancellation effective 15 February, received before February's invoice.
for kind, plan_key, at in (("changed", "b", day(10)), ("changed", "a", day(20)), ("canceled", "a", day(15))):
    store.insert_subscription_events([event(sub, kind, plan_key, at) for sub in SUBSCRIPTIONS])
    asyncio.run(rate("50", (at if kind != "canceled" else MAR) + 4 * GRACE))
out["february"] = {sub: february_of(sub) for sub in SUBSCRIPTIONS}
out["a_still_billed"] = [[str(w.start), str(w.end), str(w.amount)] for w in store.billed("sub-1")[(FEB, "a:base")].windows]
print(json.dumps(out))
"""
)

_SPANS_MOVED = (
    _PRELUDE
    + r"""
APR, MAY = (datetime(2024, m, 1, tzinfo=UTC) for m in (4, 5))
store.insert_subscription_events([event(sub, "created", "a", JAN) for sub in SUBSCRIPTIONS])
store.insert_subscription_events([event(sub, "changed", p, day(n)) for sub in SUBSCRIPTIONS for p, n in (("b", 10), ("a", 20))])
for now in (FEB, MAR):
    asyncio.run(rate("30", now + 2 * GRACE, "arrears"))
client.command("ALTER TABLE invoice_lines UPDATE windows = [] WHERE subscription_id = 'sub-2' SETTINGS mutations_sync = 1")
# The catalog raises a to 50.00; changes effective 5 and 15 February arrive in March: a 1-5
# and 15-29, b 5-15, each plan keeping its share of February.
store.insert_subscription_events([event(sub, "changed", p, day(n)) for sub in SUBSCRIPTIONS for p, n in (("b", 5), ("a", 15))])
asyncio.run(rate("50", APR + 2 * GRACE, "arrears"))
out = {"moved": {sub: february_of(sub) for sub in SUBSCRIPTIONS}}
out["a_spans"] = [[w.start.day, w.end.day] for w in store.billed("sub-1")[(FEB, "a:base")].windows]
# The catalog raises a again; a cancellation effective 25 February arrives in April.
store.insert_subscription_events([event(sub, "canceled", "a", day(25)) for sub in SUBSCRIPTIONS])
asyncio.run(rate("70", MAY + 2 * GRACE, "arrears"))
out["canceled"] = {sub: february_of(sub) for sub in SUBSCRIPTIONS}
print(json.dumps(out))
"""
)


def test_a_span_given_back_is_credited_at_what_was_paid_for_it_and_older_lines_at_the_average():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["windows_known"] == {"sub-1": True, "sub-2": False}
    # a keeps 1-10 February as paid (9.31); b 10-15 (60 x 5/29 = 10.34). sub-2's a is credited
    # at the average of what it billed (26.55 x 9/19 = 12.58).
    assert out["february"] == {"sub-1": "19.65", "sub-2": "22.92"}
    assert out["a_still_billed"] == [["2024-02-01 00:00:00+00:00", "2024-02-10 00:00:00+00:00", "9.31"]]


def test_spans_moved_by_a_later_change_are_billed_as_they_are_now():
    """a 1-10 and 20-29 February at 30.00 in arrears, b 10-20 at 60.00; a raised to 50.00, then
    changes arrive that make a 1-5 and 15-29, b 5-15 (the same shares). sub-1 gives back a's
    5-10 at what it was paid and adds 15-20 at 50.00 (+3.45; b's two spans -0.01); a later
    cancellation on the 25th, a raised to 70.00, keeps 15-20 at 50.00. sub-2's lines have no
    spans (stored before them): its shares did not move, so the move bills nothing, and the
    cancellation credits a at the average of what it billed (19.65 x 14/19 = 14.48), as before."""
    done = subprocess.run([sys.executable, "-c", _SPANS_MOVED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["a_spans"] == [[1, 5], [15, 20], [20, 1]]
    assert out["moved"] == {"sub-1": "43.78", "sub-2": "40.34"}
    assert out["canceled"] == {"sub-1": "38.61", "sub-2": "35.16"}
