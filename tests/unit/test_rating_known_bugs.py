"""Money bugs found by a review on 2026-12-04 and not fixed yet: each test states the right
result and is expected to fail (strict, so a fix makes it fail until its marker goes). The
README lists them under "Rating", "Known bugs"."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_rater import (
    FEB,
    GRACE,
    MAR,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal


def plan(key: str, currency: str = "USD", interval: str = "P1M", **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": currency, "billing_interval": interval, **extra})


@pytest.mark.xfail(strict=True, reason="known bug: the stub period before a later billing anchor is never billed")
async def test_usage_and_fee_between_the_start_and_a_later_anchor_are_billed():
    metered = plan(
        "metered",
        prices=[
            {"key": "base", "model": "flat", "amount": "31"},
            {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"},
        ],
    )
    store, publish = FakeBillingStore(), FakePublisher()
    # Starts on 17 January, billing anchored on 1 February.
    store.events.append(
        SubscriptionEvent("sub-1", "cust-1", "created", "metered", at(2024, 1, 17), FEB, at(2024, 1, 17))
    )
    store.use("cust-1", 1000, at(2024, 1, 20))  # 10.00 of January usage
    invoices = (await Rater(store, [metered], [TOKENS], GRACE, publish).run_once(MAR + timedelta(hours=2))).invoices
    billed = {
        key: sum(D(line["amount"]) for invoice in invoices for line in invoice["lines"] if line["price_key"] == key)
        for key in ("tokens", "base")
    }
    assert billed == {"tokens": D("10.00"), "base": D("46.00")}  # 15/31 of January, and February
