"""Entitlements against the README's contract, from a review (no broker, no database).

A plan change booked for mid-period takes effect at its moment; a customer read after a
restart or a partition move has the changes due for it emitted; and usage before a
subscription's start does not count towards its limits, as its invoice does not bill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.catalog import parse_catalog
from bastionary.entitlements.changes import Change
from bastionary.entitlements.service import Entitlements
from bastionary.metering.ports import RollupRow
from bastionary.rating.invoice import Segment, Subscription

CATALOG = parse_catalog(
    {
        "meters": [{"key": "api_requests", "event_type": "api.request", "aggregation": "COUNT"}],
        "plans": [
            {
                "key": "basic",
                "currency": "USD",
                "entitlements": [{"feature": "calls", "type": "metered", "meter": "api_requests", "limit": 10}],
            },
            {
                "key": "pro",
                "currency": "USD",
                "entitlements": [
                    {"feature": "sso", "type": "boolean"},
                    {"feature": "calls", "type": "metered", "meter": "api_requests", "limit": 1000},
                ],
            },
        ],
    }
)
PLANS = {plan.key: plan for plan in CATALOG.plans}
MAR1, MAR10, MAR15 = (datetime(2026, 3, day, tzinfo=UTC) for day in (1, 10, 15))


@dataclass
class Store:
    """The EntitlementStore reads and writes, in memory; usage as (window start, count) rows."""

    subs: dict[str, list[Subscription]] = field(default_factory=dict)
    rollups: dict[str, list[tuple[datetime, Decimal]]] = field(default_factory=dict)
    changes: list[tuple[Change, int, int]] = field(default_factory=list)

    def subscriptions(self, customers):
        return {c: self.subs[c] for c in customers if c in self.subs}

    def overrides(self, customers):
        return {}

    def usage(self, customers, meter, filters, start, end):
        return {
            c: sum((n for window, n in self.rollups[c] if start <= window < end), Decimal(0))
            for c in customers
            if c in self.rollups
        }

    def suspension_histories(self, customers):
        return {}

    def credit_limited(self, customers):
        return set()

    def recorded_changes(self, customers):
        out: dict[str, list[Change]] = {}
        for change, _, _ in sorted(self.changes, key=lambda stored: stored[1]):
            if change.customer_id in customers:
                out.setdefault(change.customer_id, []).append(change)
        return out

    def store_changes(self, changes, first_ordinal, published=0):
        ids = {c.change_id for c in changes}
        self.changes = [stored for stored in self.changes if stored[0].change_id not in ids]
        self.changes += [(c, first_ordinal + n, published) for n, c in enumerate(changes)]

    def mark_published(self, customer, changes, first_ordinal):
        self.store_changes(changes, first_ordinal, published=1)

    def unpublished_customers(self):
        return {c.customer_id for c, _, published in self.changes if not published}

    def unpublished(self, customer):
        return [(c, n) for c, n, published in self.changes if c.customer_id == customer and not published]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def service_on(store: Store, clock: Clock, sent: list[bytes] | None = None) -> Entitlements:
    async def publish(key: str, value: bytes):
        if sent is not None:
            sent.append(value)
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    return Entitlements(store, CATALOG.plans, CATALOG.meters, publish, asyncio.Lock(), now=clock)


async def test_a_plan_change_booked_for_mid_period_takes_effect_at_its_moment():
    # Booked in advance: no row arrives on the 15th for the poll to see, nor does a period end.
    sub = Subscription("s-1", "c1", MAR1, (Segment(PLANS["basic"], MAR1, MAR15), Segment(PLANS["pro"], MAR15)))
    clock = Clock(MAR10)
    service = service_on(Store(subs={"c1": [sub]}), clock)
    assert (await service.check("c1", "sso")).reason == "not_in_plan"
    clock.now = MAR15 - timedelta(microseconds=1)
    assert (await service.check("c1", "calls")).limit == 10
    clock.now = MAR15
    assert (await service.check("c1", "sso")).has_access
    calls = await service.check("c1", "calls")
    assert (calls.limit, calls.reset_at) == (1000, datetime(2026, 4, 1, tzinfo=UTC))  # the period goes on


async def test_a_limit_crossed_before_a_restart_is_told_once_the_customer_is_read_again():
    # The flush that took c1 to its limit landed; the worker stopped before its reconciler ran.
    # c1 is denied from then on, so no more usage comes to wake the new owner's reconciler.
    sub = Subscription("s-1", "c1", MAR1, (Segment(PLANS["basic"], MAR1),))
    store = Store(subs={"c1": [sub]}, rollups={"c1": [(MAR1 + timedelta(days=2), Decimal(10))]})
    sent: list[bytes] = []
    service = service_on(store, Clock(MAR10), sent)
    reconciler = asyncio.ensure_future(service.run_reconciler(interval=0.01))
    try:
        assert (await service.check("c1", "calls")).reason == "exhausted"
        for _ in range(200):
            if sent:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for a second copy, were one to come
    finally:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
    assert [json.loads(event)["type"] for event in sent] == ["bastionary.entitlement.exhausted.v1"]
    assert [(c.kind, published) for c, _, published in store.changes] == [("exhausted", 1)]


def rollup(customer: str, window: datetime, count: int) -> RollupRow:
    return RollupRow(
        "api_requests", customer, "", {}, window, window, Decimal(0), count, None, [], (window, Decimal(0))
    )


@dataclass
class Landed:
    rollup_rows: list[RollupRow]
    customers: frozenset[str]
    replayed: bool = False
    rows_of: frozenset[str] | None = None


async def test_usage_before_the_subscription_started_does_not_count_in_its_first_period():
    # The README's stub: started on 17 January, anchored on 1 February, the first period is
    # January's, billed usage from the 17th. The 10 calls of the 10th were an earlier
    # subscription's (billed on its invoice) and must not exhaust the new one's limit.
    jan1, jan10, jan17 = (datetime(2026, 1, day, tzinfo=UTC) for day in (1, 10, 17))
    earlier = Subscription("s-0", "c1", jan1, (Segment(PLANS["basic"], jan1, jan17),), canceled_at=jan17)
    new = Subscription("s-1", "c1", datetime(2026, 2, 1, tzinfo=UTC), (Segment(PLANS["basic"], jan17),))
    store = Store(subs={"c1": [earlier, new]}, rollups={"c1": [(jan10, Decimal(10)), (jan17, Decimal(2))]})
    service = service_on(store, Clock(datetime(2026, 1, 20, tzinfo=UTC)))
    calls = await service.check("c1", "calls")
    assert (calls.has_access, calls.usage, calls.limit) == (True, 2, 10)
    assert calls.reset_at == datetime(2026, 2, 1, tzinfo=UTC)
    # A late flush of the earlier days' usage does not count either; the new one's does.
    service.on_flush([Landed([rollup("c1", jan10, 5), rollup("c1", jan17 + timedelta(days=1), 3)], frozenset({"c1"}))])
    assert (await service.check("c1", "calls")).usage == 5


async def test_a_subscription_started_on_its_period_boundary_counts_the_whole_period():
    sub = Subscription("s-1", "c1", MAR1, (Segment(PLANS["basic"], MAR1),))
    store = Store(subs={"c1": [sub]}, rollups={"c1": [(MAR1, Decimal(4)), (MAR1 - timedelta(minutes=1), Decimal(9))]})
    service = service_on(store, Clock(MAR10))
    assert (await service.check("c1", "calls")).usage == 4
    loaded = service._loaded["c1"]
    assert loaded is not None and loaded.state.usage_start == MAR1


def suspended_store() -> Store:
    sub = Subscription("s-1", "c1", MAR1, (Segment(PLANS["basic"], MAR1),))
    store = Store(subs={"c1": [sub], "c2": [sub]})
    store.suspension_histories = lambda customers: {c: ["suspended"] for c in customers}  # type: ignore[method-assign]
    return store


async def test_a_suspension_of_an_owned_customer_not_read_yet_is_told_when_the_poll_sees_it():
    # The worker restarted; nobody has checked c1 since, and a suspended customer's app is
    # denied, so waiting for its next check may mean waiting for ever.
    sent: list[bytes] = []
    service = service_on(suspended_store(), Clock(MAR10), sent)
    reconciler = asyncio.ensure_future(service.run_reconciler(interval=60))
    try:
        await asyncio.sleep(0)
        service.invalidate({"c1", "c2"}, owned=lambda customer: customer == "c1")  # c2 is another worker's
        for _ in range(200):
            if sent:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    finally:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
    assert [(json.loads(event)["type"], json.loads(event)["subject"]) for event in sent] == [
        ("bastionary.entitlement.suspended.v1", "c1")
    ]
    assert "c2" not in service._loaded


async def test_the_poll_asks_which_changed_customers_this_worker_owns(monkeypatch):
    from bastionary.worker.services import entitlements as worker_entitlements

    calls: list[tuple[set[str], bool, bool]] = []

    class Service:
        async def run_reconciler(self) -> None:
            await asyncio.Event().wait()

        def invalidate(self, customers, owned=None):
            calls.append((set(customers), owned is not None and owned("c1"), owned is not None and owned("c2")))

    class PolledStore:
        def changed_rows(self, since):
            return {("c1", "d:1"), ("c2", "d:2")}

    class Context:
        topics = type("Topics", (), {"usage_events": "usage.events"})()

        settled = False  # the first poll comes before the worker's assignment is known

        def assignment_settled(self) -> bool:
            settled, Context.settled = Context.settled, True
            return settled

        def owns(self, customer: str, topic: str) -> bool:
            return customer == "c1" and topic == "usage.events"

    monkeypatch.setattr(worker_entitlements, "POLL_SECONDS", 0.001)
    poller = worker_entitlements.EntitlementService.__new__(worker_entitlements.EntitlementService)
    poller.ctx = Context()  # type: ignore[assignment]
    poller._opened = lambda: (Service(), PolledStore())  # type: ignore[method-assign,assignment]
    task = asyncio.ensure_future(poller._follow_changes())
    try:
        for _ in range(200):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Before: only those in memory are read again; once known, the changed ones it owns are
    # too, the first poll's included (the next polls find those rows seen already).
    assert calls[:2] == [({"c1", "c2"}, False, False), ({"c1", "c2"}, True, False)]
