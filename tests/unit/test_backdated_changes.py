"""Changes received after the periods they reach back to were invoiced: a plan change or a
cancellation effective in the past. Each period ends billed in total what it would have been
billed had the change been known before its invoice (docs/pricing.md, "Late usage")."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_minimum_adjustments import Scenario, per_period, scenarios
from tests.unit.test_rater import (
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    FEB,
    GRACE,
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(1, 3), st.sampled_from([("canceled",), ("changed",), ("canceled", "changed")]))
def test_a_period_is_billed_in_total_what_it_costs_with_the_change_known(scenario, known_after, kinds):
    """Any subscription of the minimum commitment's scenarios (fees in arrears or advance, a
    late start, late usage and corrections), its plan change, its cancellation or both
    received after one to three rounds. An ended subscription's final adjustment is its last
    bill: a change received after it is not billed, so those cases are left out."""
    scenario = replace(scenario, crash=None)
    assume(known_after < len(scenario.rounds))
    assume(scenario.canceled_at is None or scenario.rounds[known_after] < scenario.canceled_at + 2 * GRACE)
    late = asyncio.run(_billed_learning_late(scenario, known_after, kinds))
    rater = Rater(scenario.store(on_time=True), list(scenario.plans), [TOKENS], GRACE, FakePublisher())
    once = asyncio.run(rater.run_once(scenario.rounds[-1])).invoices
    assert _billed(late) == _billed(once)
