"""Entitlement state read for many customers at once (chdb): the same as one customer at a time.

The worker reads first-seen customers in batches, one query per table, so a batch read must
keep every customer's rows apart: subscriptions, overrides, usage in each one's own period,
and the changes already recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from bastionary.catalog import load_catalog
from bastionary.entitlements.changes import Change
from bastionary.entitlements.overrides import Override
from bastionary.entitlements.state import build_state, build_states
from bastionary.metering.meters import Aggregation
from bastionary.metering.readings import Reading
from bastionary.metering.rollup import RollupBuilder
from bastionary.rating.rows import SubscriptionRow
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.entitlements import ClickHouseEntitlementStore
from bastionary.storage.usage import ClickHouseUsageStore

CATALOG = load_catalog(Path(__file__).parents[1] / "fixtures" / "entitlements_catalog.yaml")
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client = open_client(f"chdb://{tmp_path_factory.mktemp('states')}/clickhouse", "bastionary", create=True)
    ClickHouseUsageStore(client).migrate()
    billing, usage = ClickHouseBillingStore(client), ClickHouseUsageStore(client)
    entitlements = ClickHouseEntitlementStore(client, CATALOG.plans)
    rows, rollups = [], RollupBuilder()
    for n in range(12):
        customer = f"cust-{n:02d}"
        # Anchors on different days: each customer has a period of its own.
        start = datetime(2026, 1, 1 + n, tzinfo=UTC)
        rows.append(SubscriptionRow(f"s-{n}", "created", f"sub-{n}", customer, "pro", start, None, start, start, ""))
        for minute in range(n + 1):  # before and inside the period that holds NOW
            at = NOW - timedelta(days=n, minutes=minute)
            rollups.add(customer, at, Reading("api_requests", Aggregation.COUNT, (("method", "GET"),)), at)
            rollups.add(customer, at, Reading("tokens", Aggregation.SUM, (), value=Decimal(n) + Decimal("0.5")), at)
    billing.insert_subscription_events(rows)
    usage.insert_rollups(rollups.rows(), "states/rollups")
    for n in (3, 7):
        entitlements.insert_override(
            Override(f"o-{n}", f"ov-{n}", f"cust-{n:02d}", "api_calls", NOW - timedelta(days=1), limit=Decimal(50 + n))
        )
    # A customer known by an override alone, and changes recorded for two customers.
    entitlements.insert_override(Override("o-x", "ov-x", "cust-override-only", "sso", NOW, enabled=True))
    changes = [
        Change(f"c-{n}-{i}", "threshold", f"cust-{n:02d}", "api_calls", NOW, {"at": i}) for n in (2, 5) for i in (0, 1)
    ]
    for n in (2, 5):
        entitlements.store_changes([c for c in changes if c.customer_id == f"cust-{n:02d}"], 0)
    return entitlements


def test_a_batch_read_gives_each_customer_what_a_read_of_that_customer_alone_gives(store):
    plans = {p.key: p for p in CATALOG.plans}
    meters = {m.key: m for m in CATALOG.meters}
    customers = [f"cust-{n:02d}" for n in range(12)] + ["cust-override-only", "cust-unknown"]
    together = build_states(store, plans, meters, customers, NOW)
    assert set(together) == set(customers)
    assert together["cust-unknown"] is None
    assert together["cust-override-only"] is not None
    for customer in customers:
        alone = build_state(store, plans, meters, customer, NOW)
        assert together[customer] == alone, customer
    usage = {c: together[c].state.usage for c in customers[:12]}
    assert len({u["tokens"] for u in usage.values()}) > 1  # customers' usage kept apart
    assert [len(together[f"cust-{n:02d}"].recorded) for n in (1, 2, 5)] == [0, 2, 2]
    assert [len(together[f"cust-{n:02d}"].state.overrides) for n in (2, 3, 7)] == [0, 1, 1]


def test_a_subscription_booked_to_start_later_takes_over_at_its_start_and_not_before(store):
    plans = {p.key: p for p in CATALOG.plans}
    meters = {m.key: m for m in CATALOG.meters}
    booked_start = NOW + timedelta(days=3)
    ClickHouseBillingStore(store.client).insert_subscription_events([
        SubscriptionRow("b-1", "created", "sub-b1", "cust-booked", "pro", NOW - timedelta(days=40), None,
                        NOW - timedelta(days=40), NOW, ""),
        SubscriptionRow("b-2", "created", "sub-b2", "cust-booked", "pro", booked_start, None, NOW, NOW, ""),
    ])  # fmt: skip
    now = build_state(store, plans, meters, "cust-booked", NOW)
    assert now is not None and now.state.plan is not None  # before: no plan until the 23rd
    # answered from the subscription in force (its period began on the 8th), not the booked one
    assert (now.state.period_start, now.next_start) == (datetime(2026, 3, 8, 12, tzinfo=UTC), booked_start)
    assert not now.stale_at(booked_start - timedelta(seconds=1)) and now.stale_at(booked_start)
    later = build_state(store, plans, meters, "cust-booked", booked_start)
    assert later is not None and later.state.plan is not None
    assert (later.state.period_start, later.next_start) == (booked_start, None)
