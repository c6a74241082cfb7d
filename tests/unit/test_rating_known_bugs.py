"""Money bugs found by the review of 2026-12-05 and not fixed yet: each test states the right
result and is expected to fail (strict, so a fix makes it fail until its marker goes). The
README lists them under "Rating", "Known bugs"."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_catalog_changes import one_plan_twice, percentage_fees
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import (
    AFTER_APR,
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


def _plan(key: str, **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", **extra})


def _pct(key: str, rate: str, fixed: str = "0", **extra: object) -> Plan:
    price = {"key": "fees", "model": "percentage", "meter": "llm_tokens", "rate": rate, "fixed_amount": fixed}
    return _plan(key, prices=[price], **extra)


def _adv(key: str, fee: str) -> Plan:
    return _plan(key, prices=[{"key": "base", "model": "flat", "amount": fee, "billing_timing": "advance"}])


@pytest.mark.xfail(
    strict=True, reason="known bug: a key with two segments in a period is compared by amount unless priced linearly"
)
def test_a_bounded_percentage_rate_changed_does_not_reach_back_to_a_period_with_one_plan_twice():
    """February: a (1-10), b (10-20), a again (20-); 10,000 on 5 Feb at a's 2.9% (a minimum of
    1.00 per segment's line, which a's second segment, without events, does not owe): 290.00.
    a's rate then goes to 3.9%: no usage of February moved, so it should stay 290.00. A bound
    applies to each segment apart, and what was billed is kept per key, summed, so a split
    moved between the segments cannot be told from one that did not: the key is compared by
    amount, and March bills February +100.00 (390.00). Linear prices (per_unit, percentage
    without bounds) are fixed (tests/unit/test_catalog_changes.py); tiers and packages are not."""
    invoices = one_plan_twice(percentage_fees("0.029", min_amount="1"), percentage_fees("0.039", min_amount="1"))
    assert per_period(invoices)[FEB.isoformat()] == D("290.00")


@pytest.mark.xfail(strict=True, reason="known bug: a share given back is credited at the average fee billed")
async def test_a_share_added_at_today_s_fee_is_given_back_at_that_fee():
    """February's fee (a, 30.00) billed in advance on January's invoice. The catalog raises a
    to 50.00. On time: a -> b on 10 February (a keeps 9/29: 9.31, b 60 x 20/29), b -> a on
    20 February (a adds 9/29 at today's 50.00: +17.24, b cut to 10/29). A cancellation effective
    15 February then arrives before February's invoice: a keeps only its first 9/29 (paid
    9.31), b 5/29 (10.34). The share given back includes the 9/29 just charged at 17.24, but
    the commit credits the average of what a was billed (26.55 x 9/19): a stays 12.58, and
    February costs 22.92 for 19.65."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    invoices = (
        await Rater(store, [_adv("a", "30"), _adv("b", "60")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)
    ).invoices
    rate = Rater(store, [_adv("a", "50"), _adv("b", "60")], [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    invoices += (await rate.run_once(at(2024, 2, 10) + 4 * GRACE)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    invoices += (await rate.run_once(at(2024, 2, 20) + 4 * GRACE)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("19.65")


@pytest.mark.xfail(strict=True, reason="known bug: a share given back is credited at the average fee billed")
async def test_a_share_added_at_today_s_fee_is_given_back_at_that_fee_in_arrears():
    """The same in arrears: February billed a 9/29 (9.31 at 30.00) and b 20/29 (41.38). The
    catalog raises a to 50.00; b -> a on 20 February, received in March, adds 9/29 at 17.24;
    a cancellation effective 15 February, received in April, gives it back at the average
    (-13.97): February ends 22.92, not 9.31 + 10.34 = 19.65."""

    def arrears(key: str, fee: str) -> Plan:
        return _plan(key, prices=[{"key": "base", "model": "flat", "amount": fee}])

    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    rate = Rater(store, [arrears("a", "30"), arrears("b", "60")], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    rate = Rater(store, [arrears("a", "50"), arrears("b", "60")], [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(AFTER_APR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("19.65")
