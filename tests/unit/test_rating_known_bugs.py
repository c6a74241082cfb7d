"""Money bugs found by reviews on 2026-12-04 and not fixed yet: each test states the right
result and is expected to fail (strict, so a fix makes it fail until its marker goes). The
README lists them under "Rating", "Known bugs"."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bastionary.rating.customers import CustomerTerms
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.tax import Invoicing, TaxProfile, TaxRate
from tests.unit.test_rater import (
    AFTER_FEB,
    AFTER_JAN,
    FEB,
    GRACE,
    PRO,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal


def plan(key: str, currency: str = "USD", interval: str = "P1M", **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": currency, "billing_interval": interval, **extra})


def _vat(rate: str) -> Invoicing:
    return Invoicing(taxes=[TaxRate(key="vat", name=f"VAT {rate}", rate=D(rate), countries=["DE"])])


def _corrected() -> FakeBillingStore:
    """January: 20.00 fee + 100.00 usage. February's invoice takes back 80.00 of January's
    usage (a late correction) and bills its own 20.00 fee: subtotal -60.00."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.use("cust-1", 10000, at(2024, 1, 10))
    store.use("cust-1", -8000, at(2024, 1, 20), ingested=FEB + GRACE + GRACE)
    return store


@pytest.mark.xfail(strict=True, reason="known bug: a reversal gives back tax the customer's exempt invoice never took")
async def test_a_correction_gives_back_no_tax_that_was_never_collected():
    store, publish = _corrected(), FakePublisher()
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE", exempt=True))
    (january,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_JAN)
    ).invoices
    assert january["tax"] == "0.00"
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))  # taxable since
    (february,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_FEB)
    ).invoices
    assert february["subtotal"] == "-60.00"
    assert D(january["tax"]) + D(february["tax"]) >= 0  # -11.40: tax never collected, given back


@pytest.mark.xfail(strict=True, reason="known bug: a reversal uses today's rate, not the rate it was collected at")
async def test_a_correction_reverses_tax_at_the_rate_it_was_collected_at():
    store, publish = _corrected(), FakePublisher()
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    (january,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_JAN)
    ).invoices
    assert january["tax"] == "22.80"
    (february,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.25")).run_once(AFTER_FEB)
    ).invoices
    # January's 15.20 on the 80.00 reversed, February's own fee taxed 5.00: -10.20, not -15.00.
    assert D(february["tax"]) == D("-10.20")
