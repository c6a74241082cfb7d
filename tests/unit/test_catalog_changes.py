"""A price changed in the catalog applies from the next invoice on: it does not reach back to
periods already invoiced, unless late usage of theirs arrives (docs/pricing.md, "Late usage").
Until 2026-12-04 every invoice priced every earlier period's usage again at today's prices,
and billed the difference as late usage: raising a price re-billed all of history."""

from __future__ import annotations

from decimal import Decimal

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import (
    AFTER_APR,
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    FEB,
    GRACE,
    JAN,
    MAR,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal


def tokens_at(unit: str) -> Plan:
    price = {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": unit}
    return Plan.model_validate({"key": "a", "currency": "USD", "billing_interval": "P1M", "prices": [price]})


async def _january_then_raised(late_tokens: int) -> list[dict]:
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.use("cust-1", 1000, at(2024, 1, 10))
    if late_tokens:
        store.use("cust-1", late_tokens, at(2024, 1, 20), ingested=FEB + 2 * GRACE)
    invoices = (await Rater(store, [tokens_at("0.01")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)).invoices
    raised = Rater(store, [tokens_at("0.02")], [TOKENS], GRACE, FakePublisher())
    return invoices + (await raised.run_once(AFTER_FEB)).invoices


async def test_a_price_raised_in_the_catalog_does_not_reach_back():
    january, february = await _january_then_raised(0)
    assert [line.get("adjusts_period_start") for line in february["lines"]] == [None]  # February's own usage
    assert per_period([january, february])[JAN.isoformat()] == D("10.00")


async def test_late_usage_after_a_raise_prices_its_period_at_today_s_price():
    """The documented limit: the period's usage is priced again whole, 1,500 tokens at 0.02."""
    invoices = await _january_then_raised(500)
    assert per_period(invoices)[JAN.isoformat()] == D("30.00")


async def test_a_fee_in_advance_raised_in_the_catalog_is_not_billed_again_for_periods_it_paid():
    """Canceled from March: January's and February's fees were billed at 30.00 before the
    raise to 50.00. February's invoice and the final adjustment billed 20.00 more for each."""
    seat = {"key": "seat", "model": "flat", "billing_timing": "advance"}

    def plan(fee: str) -> Plan:
        return Plan.model_validate(
            {"key": "a", "currency": "USD", "billing_interval": "P1M", "prices": [seat | {"amount": fee}]}
        )

    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, MAR))
    invoices = []
    for now in (at(2024, 1, 1, 1), AFTER_JAN):
        invoices += (await Rater(store, [plan("30")], [TOKENS], GRACE, FakePublisher()).run_once(now)).invoices
    raised = Rater(store, [plan("50")], [TOKENS], GRACE, FakePublisher())
    invoices += (await raised.run_once(MAR + 4 * GRACE)).invoices
    assert per_period(invoices) == {JAN.isoformat(): D("30.00"), FEB.isoformat(): D("30.00")}


def _plan(key: str, **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", **extra})


async def test_a_minimum_raised_in_the_catalog_does_not_reach_back_to_a_replanned_period():
    def flat(key, fee, minimum):
        return _plan(key, prices=[{"key": "base", "model": "flat", "amount": fee}], minimum_commitment=minimum)

    a, b = flat("a", "10", "100"), flat("b", "10", "200")
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="a")
    rate = Rater(store, [a, b], [TOKENS], GRACE, publish)
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 1, 18)))
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("200.00")
    raised = Rater(store, [a, flat("b", "10", "300")], [TOKENS], GRACE, publish)
    (april,) = (await raised.run_once(AFTER_APR)).invoices
    # observed: [("2024-02-01…", "100.00")], a true-up for February on April's invoice
    assert [(x["adjusts_period_start"], x["amount"]) for x in april["lines"] if x.get("adjusts_period_start")] == []


async def test_a_fee_added_to_the_plan_in_the_catalog_does_not_reach_back():
    a = _plan("a", prices=[{"key": "base", "model": "flat", "amount": "30"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="a")
    rate = Rater(store, [a], [TOKENS], GRACE, publish)
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices) == {"2024-01-01T00:00:00+00:00": D("30.00"), FEB.isoformat(): D("30.00")}
    grown = _plan(
        "a",
        prices=[
            {"key": "base", "model": "flat", "amount": "30"},
            {"key": "support", "model": "flat", "amount": "5"},
        ],
    )
    (march,) = (await Rater(store, [grown], [TOKENS], GRACE, publish).run_once(AFTER_MAR)).invoices
    # observed: [('2024-01-01…', '5.00'), ('2024-02-01…', '5.00')] billed for periods invoiced long ago
    assert [(x["adjusts_period_start"], x["amount"]) for x in march["lines"] if x.get("adjusts_period_start")] == []


async def test_usage_moved_between_two_segments_of_one_plan_is_adjusted():
    """February: A (1-10), B (10-20), A again (20-). A's tokens are graduated, the first 1,000
    of each segment free. 1,500 tokens on 25 February: 5.00. A correction re-times 500 of them
    to 5 February (-500 on the 25th, +500 on the 5th, both late): A's segments hold 500 and
    1,000, both free, so February owes 0.00. A's summed quantity did not move, so f491ccd
    skips the line and February stays billed 5.00."""
    tiers = [{"up_to": "1000", "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.01"}]
    a = _plan("a", prices=[{"key": "tokens", "model": "graduated", "meter": "llm_tokens", "tiers": tiers}])
    b = _plan("b", prices=[{"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"}])
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    store.use("cust-1", 1500, at(2024, 2, 25))
    rate = Rater(store, [a, b], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("5.00")
    late = AFTER_FEB + GRACE
    store.use("cust-1", -500, at(2024, 2, 25), ingested=late)
    store.use("cust-1", 500, at(2024, 2, 5), ingested=late)
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("0.00")  # observed 5.00
