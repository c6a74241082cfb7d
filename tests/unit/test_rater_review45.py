"""Rater bugs found by the review of 2026-12-07 (forty-fifth session) of the rating worker's
trust properties, each confirmed by a script first (/tmp/review45_rater/) and stated here as a
test that failed before its fix."""

from __future__ import annotations

import pytest

from bastionary.rating.rater import Rater
from bastionary.rating.schedule import PROGRESSIVE
from tests.unit.test_rater import GRACE, TOKENS, FakePublisher, StoreFailed, at
from tests.unit.test_rater_timing import ADV, BIG, FIXED, STEPS, store_on


async def test_a_usage_threshold_found_by_a_run_that_failed_is_looked_for_again_in_the_same_minute():
    """January's usage crosses 50.00 at 23:58 on its last day. The 23:59 run finds the crossing
    and fails storing it (ClickHouse away for a moment); the next tick, still in 23:59, took the
    minute as checked and did not look again, and at 00:00 January had ended: its progressive
    invoice was never issued, the whole 60.00 waiting for January's invoice."""
    store, publish = store_on("steps"), FakePublisher()
    store.use("cust-1", 6000, at(2024, 1, 31, 23, 58))
    rater = Rater(store, [ADV, BIG, FIXED, STEPS], [TOKENS], GRACE, publish)
    store.fail_store_before = "lines"
    with pytest.raises(StoreFailed):
        await rater.run_once(at(2024, 1, 31, 23, 59, 10))
    store.fail_store_before = None

    (early,) = (await rater.run_once(at(2024, 1, 31, 23, 59, 20))).invoices
    (january,) = (await rater.run_once(at(2024, 2, 1, 2))).invoices

    assert (early["kind"], early["total"]) == (PROGRESSIVE, "60.00")
    assert (january["kind"], january["total"]) == ("period", "5.00")


_CREATED_TWICE = """
import asyncio, json, sys, tempfile
from datetime import UTC, datetime, timedelta
from bastionary.rating.rater import Rater
from bastionary.rating.rows import SubscriptionRow
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
from tests.integration.rater_store_crash_drill import PRO, TOKENS, Recorder

JAN, FEB = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
client = open_client(f"chdb://{tempfile.mkdtemp()}/clickhouse", "bastionary", create=True)
ClickHouseUsageStore(client).migrate()
store = ClickHouseBillingStore(client)
created = SubscriptionRow(
    "create-1", "created", "sub-1", "cust-1", "pro", JAN, None, JAN + timedelta(microseconds=1500),
    JAN + timedelta(minutes=5), "",
)
store.insert_subscription_events([created])
store.insert_subscription_events([created._replace(received_at=FEB + timedelta(minutes=30))])
received = store.subscriptions({"pro": PRO})[0].received_at
rated = asyncio.run(Rater(store, [PRO], [TOKENS], timedelta(hours=1), Recorder()).run_once(FEB + timedelta(hours=2)))
print(json.dumps({"received": received.isoformat(), "invoiced": [d["period_start"] for d in rated.invoices]}))
"""


def test_a_created_event_stored_again_keeps_the_moment_it_was_first_received():
    """The table kept the last copy: the copy's received_at (00:30 on 1 February, inside
    January's grace) made January look like a period before the subscription was received,
    skipped as a backfill would be, and January's fee was never billed. Real chdb in a child
    process (one process per data directory)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _CREATED_TWICE], capture_output=True, text=True, cwd=repo, timeout=300, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"received": "2024-01-01T00:05:00+00:00", "invoiced": ["2024-01-01T00:00:00+00:00"]}
