"""Entitlements against the README's contract, from a review (no broker, no database).

An override that begins or ends after a customer's state was read has its change told once a
check meets it, and a notify_at threshold of a limit the Decimal(38, 9) column holds is
compared with its exact share. On a worker that keeps landing flushes, the reconciler still
sweeps by the clock, and a held customer whose period ended is read again by its next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.catalog import parse_catalog
from bastionary.entitlements.changes import due_changes
from bastionary.entitlements.evaluate import CustomerState
from bastionary.entitlements.overrides import Override
from bastionary.entitlements.service import Entitlements
from bastionary.entitlements.spec import EntitledPlan
from bastionary.metering.ports import RollupRow
from bastionary.metering.sink import LandedFlush
from bastionary.rating.invoice import Segment, Subscription
from tests.unit.test_entitlements_review43 import Clock
from tests.unit.test_entitlements_review43 import Store as StoreWithoutOverrides

CATALOG = parse_catalog(
    {
        "meters": [{"key": "api_requests", "event_type": "api.request", "aggregation": "COUNT"}],
        "plans": [
            {
                "key": "basic",
                "currency": "USD",
                "entitlements": [{"feature": "calls", "type": "metered", "meter": "api_requests", "limit": 10}],
            }
        ],
    }
)
BASIC = CATALOG.plans[0]
MAR1, MAR2, MAR10 = (datetime(2026, 3, day, tzinfo=UTC) for day in (1, 2, 10))
APR1 = datetime(2026, 4, 1, tzinfo=UTC)


@dataclass
class Store(StoreWithoutOverrides):
    """The in-memory EntitlementStore of the review of the forty-third session, with overrides."""

    granted: dict[str, list[Override]] = field(default_factory=dict)

    def overrides(self, customers):
        return {c: list(self.granted[c]) for c in customers if c in self.granted}


async def test_an_override_that_begins_or_ends_after_the_read_is_told_once_a_check_meets_it():
    # c1 used its 10 calls on the 2nd and is denied, so it sends no usage that would wake the
    # reconciler. A grant booked for later, then its end, change access; the sweep that would
    # see them runs only on an idle minute (60 s here: other customers' flushes keep it awake).
    grant_at = MAR10 + timedelta(hours=1)
    grant = Override("e", "o", "c1", "calls", grant_at, grant_at + timedelta(days=1), limit_delta=Decimal(100))
    sub = Subscription("s-1", "c1", MAR1, (Segment(BASIC, MAR1),))
    store = Store(subs={"c1": [sub]}, rollups={"c1": [(MAR2, Decimal(10))]}, granted={"c1": [grant]})
    clock = Clock(MAR10)
    sent: list[str] = []

    async def publish(key: str, value: bytes):
        sent.append(json.loads(value)["type"])
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    service = Entitlements(store, CATALOG.plans, CATALOG.meters, publish, asyncio.Lock(), now=clock)

    async def told_after_a_check_at(moment: datetime) -> tuple[bool, list[str]]:
        clock.now = moment
        before = len(sent)
        access = (await service.check("c1", "calls")).has_access
        for _ in range(100):
            await asyncio.sleep(0.005)
        return access, sent[before:]

    reconciler = asyncio.ensure_future(service.run_reconciler(interval=60))
    try:
        assert await told_after_a_check_at(MAR10) == (False, ["bastionary.entitlement.exhausted.v1"])
        granted = await told_after_a_check_at(grant_at + timedelta(minutes=5))
        assert granted == (True, ["bastionary.entitlement.restored.v1"])
        lapsed = await told_after_a_check_at(grant_at + timedelta(days=1, minutes=5))
        assert lapsed == (False, ["bastionary.entitlement.exhausted.v1"])
    finally:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
    assert [(c.kind, published) for c, _, published in store.changes] == [
        ("exhausted", 1),
        ("restored", 1),
        ("exhausted", 1),
    ]


def test_a_threshold_of_a_limit_the_column_holds_is_its_exact_share():
    # 1.5 x 999999999999999999.999999999 is ...999.9999999985; at the default 28 digits it
    # rounds down to ...999.999999998, a usage the column holds, still short of the threshold.
    limit = "999999999999999999.999999999"
    plan = EntitledPlan.model_validate(
        {
            "key": "pro",
            "currency": "USD",
            "entitlements": [
                {"feature": "tokens", "type": "metered", "meter": "m", "limit": limit, "soft": True, "notify_at": [1.5]}
            ],
        }
    )

    def due(usage: str) -> list[str | None]:
        state = CustomerState("c1", plan, MAR1, APR1, False, {"tokens": Decimal(usage)}, ())
        return [c.detail.get("fraction") for c in due_changes(state, [], MAR10)]

    assert due("1499999999999999999.999999998") == []
    assert due("1499999999999999999.999999999") == ["1.5"]


def _told_service(store: Store, clock: Clock, sent: list[tuple[str, str]]) -> Entitlements:
    async def publish(key: str, value: bytes):
        event = json.loads(value)
        sent.append((event["subject"], event["type"].split(".")[2]))
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    return Entitlements(store, CATALOG.plans, CATALOG.meters, publish, asyncio.Lock(), now=clock)


def _landed(customer: str, window: datetime, count: int) -> LandedFlush:
    row = RollupRow("api_requests", customer, "", {}, window, window, Decimal(0), count, None, [], (window, Decimal(0)))
    return LandedFlush("usage.events", 0, 0, 0, False, [row], frozenset([customer]))


async def _stop(task: asyncio.Future) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_busy_worker_still_sweeps_by_the_clock_for_an_override_that_began():
    # c1 used its 10 calls and is denied; a grant begins later. Nobody checks c1, and c2's
    # flushes wake the reconciler every 20 ms: the sweep that tells the grant ran only on an
    # idle interval, so c1's restored was never told.
    grant_at = MAR10 + timedelta(minutes=5)
    grant = Override("e", "o", "c1", "calls", grant_at, None, limit_delta=Decimal(100))
    subs = {c: [Subscription(f"s-{c}", c, MAR1, (Segment(BASIC, MAR1),))] for c in ("c1", "c2")}
    store = Store(subs=subs, rollups={"c1": [(MAR2, Decimal(10))], "c2": []}, granted={"c1": [grant]})
    clock = Clock(MAR10)
    sent: list[tuple[str, str]] = []
    service = _told_service(store, clock, sent)
    reconciler = asyncio.ensure_future(service.run_reconciler(interval=0.05))
    try:
        await service.check("c1", "calls")
        await service.check("c2", "calls")
        await asyncio.sleep(0.2)
        clock.now = grant_at + timedelta(seconds=1)
        for _ in range(50):
            service.invalidate(["c2"])
            await asyncio.sleep(0.02)
    finally:
        await _stop(reconciler)
    assert [kind for customer, kind in sent if customer == "c1"] == ["exhausted", "restored"]


async def test_a_flush_of_a_held_customer_whose_period_ended_reads_it_again_in_the_new_one():
    # c1 was read in March; in April it uses its whole new limit and nobody checks it. Its
    # April rows fell outside the held state's period and were skipped, so its exhausted
    # waited for a check (or, on a busy worker, forever).
    subs = {"c1": [Subscription("s-1", "c1", MAR1, (Segment(BASIC, MAR1),))]}
    store = Store(subs=subs, rollups={"c1": []})
    clock = Clock(MAR10)
    sent: list[tuple[str, str]] = []
    service = _told_service(store, clock, sent)
    await service.check("c1", "calls")
    reconciler = asyncio.ensure_future(service.run_reconciler(interval=60))
    try:
        await asyncio.sleep(0.05)
        clock.now = APR1 + timedelta(minutes=3)
        window = APR1 + timedelta(minutes=1)
        store.rollups["c1"].append((window, Decimal(10)))
        service.on_flush([_landed("c1", window, 10)])
        for _ in range(40):
            await asyncio.sleep(0.005)
    finally:
        await _stop(reconciler)
    assert sent == [("c1", "exhausted")]


async def test_a_feature_only_an_override_names_stays_known_after_the_override_ended():
    # A trial of a feature no plan has: once it ended, the API answered 404 unknown_feature,
    # where openapi.yaml gives 200 not_in_plan (404: no plan and no override knows it).
    trial = Override("e", "o", "c1", "beta_export", MAR1, MAR10, enabled=True)
    store = Store(subs={"c1": [Subscription("s-1", "c1", MAR1, (Segment(BASIC, MAR1),))]}, granted={"c1": [trial]})
    clock = Clock(MAR2)
    service = _told_service(store, clock, [])
    assert (await service.check("c1", "beta_export")).has_access
    clock.now = MAR10 + timedelta(days=1)
    decision = await service.check("c1", "beta_export")
    assert (decision.has_access, decision.reason) == (False, "not_in_plan")
    assert service.named_by_override("c1", "beta_export")
    assert not service.named_by_override("c1", "warp_drive")
    assert not service.named_by_override("c2", "beta_export")
