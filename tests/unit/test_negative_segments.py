"""A per_unit key split over segments of one plan (A -> B -> A) whose usage in one segment is
below zero (a correction larger than what that segment used): that segment is priced as zero,
so the key no longer costs its summed quantity times the price, and a move of usage (or of
the plan's boundaries) that leaves the sum alone still moves its amount. The period is billed
in total what rating it once, with everything known on time, gives."""

from __future__ import annotations

import pytest

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent

from .test_minimum_adjustments import per_period
from .test_rater import AFTER_FEB, AFTER_JAN, GRACE, JAN, TOKENS, FakeBillingStore, FakePublisher, at


def per_unit(key: str, unit_amount: str) -> Plan:
    price = {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": unit_amount}
    return Plan.model_validate({"key": key, "currency": "USD", "prices": [price]})


A, B = per_unit("a", "0.01"), per_unit("b", "0.02")
A_B_A = [
    SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 1, 10)),
    SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 1, 20)),
]


async def january(store: FakeBillingStore, changed_late: bool = False) -> str:
    rater = Rater(store, [A, B], [TOKENS], GRACE, FakePublisher())
    invoices = (await rater.run_once(AFTER_JAN)).invoices
    if changed_late:
        store.events += A_B_A
    invoices += (await rater.run_once(AFTER_FEB)).invoices
    return str(per_period(invoices)[JAN.isoformat()])


def on_plan_a() -> FakeBillingStore:
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    return store


async def test_a_backdated_change_that_leaves_a_segment_below_zero_bills_what_rating_on_time_does():
    def used() -> FakeBillingStore:
        store = on_plan_a()
        store.use("cust-1", 1000, at(2024, 1, 5))  # a's first segment
        store.use("cust-1", -1000, at(2024, 1, 25))  # a correction, in a's second segment
        return store

    known = used()
    known.events += A_B_A
    assert await january(known) == "10.00"  # the second segment's -1000 is priced as zero
    # Received after January's invoice (0.00: one segment, 0 tokens), the change was compared
    # by the key's summed quantity, 0 both times, and January stayed 0.00.
    assert await january(used(), changed_late=True) == "10.00"


@pytest.mark.parametrize("late", [False, True], ids=["on-time", "late"])
async def test_late_usage_that_takes_a_segment_below_zero_bills_what_rating_on_time_does(late):
    store = on_plan_a()
    store.events += A_B_A
    store.use("cust-1", 1000, at(2024, 1, 5))
    ingested = at(2024, 2, 10) if late else None
    store.use("cust-1", 500, at(2024, 1, 6), ingested)
    store.use("cust-1", -500, at(2024, 1, 25), ingested)  # the sum stays 1000
    assert await january(store) == "15.00"  # 1500 x 0.01, and -500 priced as zero
