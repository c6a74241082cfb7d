"""Money bugs found by a review on 2026-12-04 and not fixed yet: each test states the right
result and is expected to fail (strict, so a fix makes it fail until its marker goes). The
README lists them under "Rating", "Known bugs"."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_rater import (
    AFTER_FEB,
    AFTER_JAN,
    FEB,
    GRACE,
    JAN,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal


def plan(key: str, currency: str = "USD", interval: str = "P1M", **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": currency, "billing_interval": interval, **extra})


@pytest.mark.xfail(strict=True, reason="known bug: late usage that the minimum commitment covered is billed again")
async def test_late_usage_the_minimum_already_covered_is_not_billed_again():
    mini = plan(
        "mini",
        minimum_commitment="100",
        prices=[{"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"}],
    )
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.use("cust-1", 6000, at(2024, 1, 10))  # 60.00: January is trued up to 100.00
    rate = Rater(store, [mini], [TOKENS], GRACE, publish)
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert january["subtotal"] == "100.00"
    store.use("cust-1", 2000, at(2024, 1, 31), ingested=FEB + GRACE)  # 20.00 late: 80.00, under the minimum
    (february,) = (await rate.run_once(AFTER_FEB)).invoices
    adjustments = [line for line in february["lines"] if line.get("adjusts_period_start") == JAN.isoformat()]
    # docs/pricing.md, late usage: a period is billed in total exactly its final price.
    assert D(january["subtotal"]) + sum(D(line["amount"]) for line in adjustments) == D("100.00")


@pytest.mark.xfail(strict=True, reason="known bug: a change to a plan in another currency is accepted and mixed")
async def test_a_change_to_a_plan_in_another_currency_never_adds_dollars_to_yen():
    usd = plan("usd", prices=[{"key": "base", "model": "flat", "amount": "62"}])
    jpy = plan("jpy", "JPY", prices=[{"key": "base", "model": "flat", "amount": "9300"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="usd")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "jpy", None, None, at(2024, 1, 16, 12)))
    (january,) = (await Rater(store, [usd, jpy], [TOKENS], GRACE, publish).run_once(AFTER_JAN)).invoices
    # 31.00 USD and 4650 JPY were summed into one JPY total of 4681.
    assert (january["currency"], january["subtotal"]) != ("JPY", "4681")


@pytest.mark.xfail(
    strict=True, reason="known bug: a change to a plan with another billing interval bills its fee per old period"
)
async def test_a_change_to_a_yearly_plan_bills_its_fee_once_a_year():
    monthly = plan("monthly", prices=[{"key": "base", "model": "flat", "amount": "100"}])
    yearly = plan("yearly", interval="P1Y", prices=[{"key": "base", "model": "flat", "amount": "1200"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="monthly")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "yearly", None, None, FEB))
    invoices = (await Rater(store, [monthly, yearly], [TOKENS], GRACE, publish).run_once(at(2024, 4, 1, 2))).invoices
    # January on the monthly plan (100), then at most the yearly fee: 1200 was billed for each month.
    assert sum(D(invoice["subtotal"]) for invoice in invoices) <= D("1300")
