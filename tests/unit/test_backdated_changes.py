"""Changes received after the periods they reach back to were invoiced: a plan change or a
cancellation effective in the past. Each period ends billed in total what it would have been
billed had the change been known before its invoice (docs/pricing.md, "Late usage")."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_minimum_adjustments import Scenario, mini, per_period, scenarios
from tests.unit.test_rater import (
    AFTER_APR,
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    FEB,
    GRACE,
    JAN,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal


def plan(key: str, **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", **extra})


def _flat(key: str, fee: str, minimum: str | None = None) -> Plan:
    extra: dict[str, object] = {"minimum_commitment": minimum} if minimum else {}
    return plan(key, prices=[{"key": "base", "model": "flat", "amount": fee}], **extra)


@pytest.mark.parametrize(
    ("old", "new", "february"),
    [
        pytest.param(_flat("a", "30"), _flat("b", "60"), "60.00", id="its-fee-in-arrears"),
        pytest.param(_flat("a", "10", "100"), _flat("b", "10", "200"), "200.00", id="its-minimum"),
    ],
)
async def test_a_backdated_plan_change_rates_a_whole_invoiced_period_on_the_new_plan(old, new, february):
    """Changed on 18 January, received after February was invoiced: February, wholly on the
    new plan, is rated again on it (it stayed billed on the old plan, fee and minimum, unless
    usage of it was adjusted)."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="a")
    rate = Rater(store, [old, new], [TOKENS], GRACE, publish)
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 1, 18)))
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D(february)


async def test_usage_billed_on_the_old_plan_is_taken_back_and_billed_on_the_new():
    """February's 1000 tokens were billed on a (0.01 each); on b they cost 0.02 each."""
    metered = [{"key": "tokens", "model": "per_unit", "meter": "llm_tokens"}]
    old = plan("a", prices=[metered[0] | {"unit_amount": "0.01"}])
    new = plan("b", prices=[metered[0] | {"unit_amount": "0.02"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.use("cust-1", 1000, at(2024, 2, 10))
    rate = Rater(store, [old, new], [TOKENS], GRACE, publish)
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 1, 18)))
    (march,) = (await rate.run_once(AFTER_MAR)).invoices
    adjusted = [(line["description"], line["amount"]) for line in march["lines"] if line.get("adjusts_period_start")]
    assert ("Adjustment: plan change for 2024-02-01 00:00–2024-03-01 00:00 (tokens)", "-10.00") in adjusted
    assert per_period([*invoices, march])[FEB.isoformat()] == D("20.00")


async def _billed_learning_late(scenario: Scenario, known_after: int, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rated round by round, with the subscription's events of ``kinds`` received only after
    round ``known_after``."""
    store = scenario.store(on_time=True)
    held = [event for event in store.events if event.kind in kinds]
    store.events[:] = [event for event in store.events if event.kind not in kinds]
    rater = Rater(store, list(scenario.plans), [TOKENS], GRACE, FakePublisher())
    invoices: list[dict[str, Any]] = []
    for n, now in enumerate(scenario.rounds):
        if n == known_after:
            store.events.extend(held)
        invoices.extend((await rater.run_once(now)).invoices)
    return invoices


def _billed(invoices: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Per period, what it was billed; a period billed nothing in total (one a cancellation
    removed after it was invoiced) is left out, as it is when it was never invoiced."""
    return {period: amount for period, amount in per_period(invoices).items() if amount != 0}


@st.composite
def with_fees_on_both(draw: st.DrawFn) -> Scenario:
    """A minimum commitment's scenario whose second plan may bill a fee too, in arrears or in
    advance (a change between fees of two timings is where the review of 2026-12-04 found a
    period rated again on the wrong share)."""
    scenario = draw(scenarios())
    first, second = scenario.plans
    if draw(st.booleans()):
        fee = str(D(CURRENCY_FEES[second.currency]) * 2)
        timing = draw(st.sampled_from(["arrears", "advance"]))
        unit = str(second.prices[0].unit_amount)  # type: ignore[union-attr]  # mini's per-unit tokens price
        minimum = str(second.minimum_commitment)
        second = mini("b", second.currency, minimum, unit, prorate=second.prorate, fee=fee, timing=timing)
    return replace(scenario, plans=(first, second), crash=None)


CURRENCY_FEES = {"USD": "30", "JPY": "3000", "BHD": "30"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_fees_on_both(), st.integers(1, 3), st.sampled_from([("canceled",), ("changed",), ("canceled", "changed")]))
def test_a_period_is_billed_in_total_what_it_costs_with_the_change_known(scenario, known_after, kinds):
    """Any subscription of the minimum commitment's scenarios (fees in arrears or advance, a
    late start, late usage and corrections), its plan change, its cancellation or both
    received after one to three rounds. An ended subscription's final adjustment is its last
    bill: a change received after it is not billed, so those cases are left out."""
    assume(known_after < len(scenario.rounds))
    assume(scenario.canceled_at is None or scenario.rounds[known_after] < scenario.canceled_at + 2 * GRACE)
    late = asyncio.run(_billed_learning_late(scenario, known_after, kinds))
    rater = Rater(scenario.store(on_time=True), list(scenario.plans), [TOKENS], GRACE, FakePublisher())
    once = asyncio.run(rater.run_once(scenario.rounds[-1])).invoices
    assert _billed(late) == _billed(once)


# --- found by the review of 2026-12-04 (each failed before its fix) -------------------------


def _priced(key: str, fee: str, timing: str = "arrears") -> Plan:
    return plan(key, prices=[{"key": "base", "model": "flat", "amount": fee, "billing_timing": timing}])


def _changed(to: str, when: datetime) -> SubscriptionEvent:
    return SubscriptionEvent("sub-1", "cust-1", "changed", to, None, None, when)


def _canceled(when: datetime) -> SubscriptionEvent:
    return SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, when)


async def _rounds(store: FakeBillingStore, plans: list[Plan], moments: list[datetime], learn=None) -> list[dict]:
    rate = Rater(store, plans, [TOKENS], GRACE, FakePublisher())
    invoices: list[dict[str, Any]] = []
    for n, now in enumerate(moments):
        store.events.extend((learn or {}).get(n, []))
        invoices += (await rate.run_once(now)).invoices
    return invoices


async def _known_and_late(plans, events, moments, learn_at) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    known, late = FakeBillingStore(), FakeBillingStore()
    for store in (known, late):
        store.subscribe("sub-1", "cust-1", plan="a")
    known.events.extend(events)
    on_time = per_period(await _rounds(known, plans, moments))
    return on_time, per_period(await _rounds(late, plans, moments, {learn_at: events}))


async def test_a_backdated_change_to_a_fee_in_advance_prorates_the_old_fee_in_arrears():
    """The change's advance invoice bills b for January; January was then billed on a and b
    both, and was never rated again: a's fee stayed whole (60.97 for 45.49)."""
    plans = [_priced("a", "30"), _priced("b", "60", "advance")]
    on_time, late = await _known_and_late(plans, [_changed("b", at(2024, 1, 16))], [AFTER_JAN, AFTER_FEB, AFTER_MAR], 1)
    assert late[JAN.isoformat()] == on_time[JAN.isoformat()] == D("45.49")


async def test_a_price_changed_in_the_catalog_does_not_reach_back_to_a_period_rated_again():
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    a, b = _priced("a", "30"), _priced("b", "60")
    invoices = await _rounds(store, [a, b], [AFTER_JAN, AFTER_FEB, AFTER_MAR], {2: [_changed("b", at(2024, 1, 18))]})
    assert per_period(invoices)[FEB.isoformat()] == D("60.00")
    (april,) = (
        await Rater(store, [a, _priced("b", "90")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_APR)
    ).invoices
    assert [line["amount"] for line in april["lines"] if line.get("adjusts_period_start")] == []


async def test_a_return_to_the_first_plan_learned_late_moves_the_shares():
    """A -> B -> A in January, the return learned after January's invoice: the same plans,
    other shares of them."""
    plans, moments = [_priced("a", "30"), _priced("b", "60")], [AFTER_JAN, AFTER_FEB, AFTER_MAR]
    known, late = FakeBillingStore(), FakeBillingStore()
    for store in (known, late):
        store.subscribe("sub-1", "cust-1", plan="a")
        store.events.append(_changed("b", at(2024, 1, 10)))
    known.events.append(_changed("a", at(2024, 1, 20)))
    on_time = per_period(await _rounds(known, plans, moments))
    learned = per_period(await _rounds(late, plans, moments, {1: [_changed("a", at(2024, 1, 20))]}))
    assert learned[JAN.isoformat()] == on_time[JAN.isoformat()]


async def test_a_backdated_cancellation_prorates_the_fee_in_arrears_of_the_period_it_cuts():
    moments = [AFTER_JAN, AFTER_FEB, at(2024, 3, 10)]
    on_time, late = await _known_and_late([_priced("a", "30")], [_canceled(at(2024, 2, 15))], moments, 2)
    assert late[FEB.isoformat()] == on_time[FEB.isoformat()] == D("14.48")


async def test_a_plan_change_received_after_the_final_adjustment_bills_nothing():
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(_canceled(FEB))
    rate = Rater(store, [_priced("a", "30"), _priced("b", "60", "advance")], [TOKENS], GRACE, FakePublisher())
    ended = (await rate.run_once(FEB + 4 * GRACE)).invoices
    assert [(i["kind"], i["status"]) for i in ended] == [("period", "finalized"), ("final_adjustment", "empty")]
    store.events.append(_changed("b", at(2024, 1, 16)))
    assert [i for i in (await rate.run_once(AFTER_FEB)).invoices if i["status"] != "empty"] == []


def _progressive_plans() -> tuple[Plan, Plan]:
    """a and b bill tokens progressively from 50.00, b at twice a's price."""
    metered = {"key": "tokens", "model": "per_unit", "meter": "llm_tokens"}
    a = plan("a", prices=[metered | {"unit_amount": "0.01"}], usage_thresholds=["50"])
    b = plan("b", prices=[metered | {"unit_amount": "0.02"}], usage_thresholds=["50"])
    return a, b


async def test_a_backdated_change_does_not_bill_a_progressively_billed_period_twice():
    """February's usage was billed progressively on a (60.00); b, learned before February's
    invoice, prices it 120.00. The invoice deducted only what was billed under b's key, so
    February stood at 180.00 until the next invoice took a's 60.00 back."""
    a, b = _progressive_plans()
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.use("cust-1", 6000, at(2024, 2, 10))
    rate = Rater(store, [a, b], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(at(2024, 2, 12))).invoices
    assert [i["kind"] for i in invoices] == ["period", "progressive"]
    store.events.append(_changed("b", at(2024, 1, 18)))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("120.00")


async def test_a_plan_replaced_from_the_start_does_not_bill_a_progressive_period_twice():
    a, b = _progressive_plans()
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.use("cust-1", 6000, at(2024, 1, 10))
    rate = Rater(store, [a, b], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(at(2024, 1, 12))).invoices
    assert [(i["kind"], i["subtotal"]) for i in invoices] == [("progressive", "60.00")]
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 1, 1)))
    invoices += (await rate.run_once(AFTER_JAN)).invoices
    assert per_period(invoices)["2024-01-01T00:00:00+00:00"] == D("120.00")  # observed 180.00


FREE = plan("free", prices=[])


def _minimum_only(minimum: str) -> Plan:
    return plan("floor", prices=[], minimum_commitment=minimum)


@pytest.mark.parametrize(
    ("first", "then", "january"),
    [
        pytest.param(FREE, _flat("a", "30"), "30.00", id="free-to-a-fee"),
        pytest.param(_minimum_only("50"), _flat("a", "30"), "30.00", id="a-minimum-alone-to-a-fee"),
        pytest.param(_flat("a", "30"), FREE, "0.00", id="a-fee-to-free"),
    ],
)
async def test_a_period_invoiced_on_a_plan_without_prices_is_rated_again_after_a_backdated_change(first, then, january):
    """January invoiced on a plan without prices (no line names it), then changed from 1
    January, received in February. Until 2026-12-05 a period holding no line key was never
    rated again: free to a fee of 30.00 billed January nothing, a minimum of 50.00 alone to a
    fee of 30.00 kept January at 50.00."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan=first.key)
    rate = Rater(store, [first, then], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", then.key, None, None, JAN))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[JAN.isoformat()] == D(january)


async def test_a_minimum_alone_raised_in_the_catalog_does_not_reach_back_to_a_period_moved_onto_it():
    """January billed a fee of 30.00, then moved onto a 50.00 minimum alone from 1 January:
    January costs 50.00. The catalog then raises that minimum to 80.00: January stays at 50.00.
    Until 2026-12-05 a period on a plan without prices stayed to be rated again for ever, and
    each later invoice trued it up to the minimum of the day."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    rate = Rater(store, [_flat("a", "30"), _minimum_only("50")], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "floor", None, None, JAN))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[JAN.isoformat()] == D("50.00")
    raised = Rater(store, [_flat("a", "30"), _minimum_only("80")], [TOKENS], GRACE, FakePublisher())
    invoices += (await raised.run_once(AFTER_MAR)).invoices
    assert per_period(invoices)[JAN.isoformat()] == D("50.00")
