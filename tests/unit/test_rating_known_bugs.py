"""Money bugs found by the third review of 2026-12-04 and not fixed yet: each test states the
right result and is expected to fail (strict, so a fix makes it fail until its marker goes).
The README lists them under "Rating", "Known bugs"."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bastionary.rating.customers import CustomerTerms
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from bastionary.rating.tax import TaxProfile
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import (
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    FEB,
    GRACE,
    PRO,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)
from tests.unit.test_tax_of_adjustments import ADV, _vat, plan

D = Decimal


def _rater(store, plans, rate):
    return Rater(store, plans, [TOKENS], GRACE, FakePublisher(), invoicing=_vat(rate))


def _taxed_per_rate(invoice):
    """The invoice's tax lines: (rate, taxable, amount)."""
    return sorted((t["rate"], t["taxable"], t["amount"]) for t in invoice["tax_lines"])


@pytest.mark.xfail(
    strict=True,
    reason="known bug: a fee billed on an advance invoice is adjusted at the rates of the invoice before its period",
)
async def test_advance_fee_billed_on_a_plan_change_invoice_is_refunded_at_the_rate_it_was_collected_at():
    """January on PRO, invoiced at 19%. On 10 February the customer moves to ADV (30.00 in
    advance): the plan change's advance invoice bills February's 20/29 share, 20.69, at 25%.
    A cancellation on 15 February takes 15.52 of it back on February's invoice: the tax
    collected on it was 25%, so 3.88 is owed back; 0220d78 reverses it at January's 19%
    (2.95), though January's invoice never billed this fee."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    await _rater(store, [PRO, ADV], "0.19").run_once(AFTER_JAN)
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "adv", None, None, at(2024, 2, 10)))
    later = _rater(store, [PRO, ADV], "0.25")
    (advance,) = (await later.run_once(at(2024, 2, 11))).invoices
    assert advance["kind"] == "advance" and advance["subtotal"] == "20.69" and advance["tax"] == "5.17"
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 2, 15)))
    invoices = (await later.run_once(at(2024, 2, 20))).invoices
    (feb,) = [i for i in invoices if i["kind"] == "period"]
    refund = [line for line in feb["lines"] if line.get("billing_timing") == "advance"]
    assert [line["amount"] for line in refund] == ["-15.52"]
    # Every line of February's invoice at 25%: its own fee (PRO, 1-10 Feb, 6.21) and the refund.
    # Observed: [("0.19", "-15.52", "-2.95"), ("0.25", "6.21", "1.55")]: 0.93 of tax kept.
    assert _taxed_per_rate(feb) == [("0.25", "-9.31", "-2.33")]


def _adv(fee: str):
    return plan("adv", prices=[{"key": "base", "model": "flat", "amount": fee, "billing_timing": "advance"}])


@pytest.mark.xfail(strict=True, reason="known bug: a fee whose share moves is priced at today's amount")
async def test_a_fee_in_advance_raised_in_the_catalog_does_not_reach_back_through_a_cancellation():
    """January's invoice bills February's fee, 30.00. The catalog then raises it to 50.00. A
    cancellation on 15 February (14/29 of the period) should give back the unused 15/29 of
    the 30.00 paid: February costs 14.48. advance_lines prices the new share at today's 50.00:
    50 x 14/29 - 30 = -5.86, February costs 24.14 (9.66 charged for a raise the period never had)."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="adv")
    await Rater(store, [_adv("30")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 2, 15)))
    raised = Rater(store, [_adv("50")], [TOKENS], GRACE, FakePublisher())
    invoices = [store.document(i) for i in store.invoices]
    invoices += (await raised.run_once(at(2024, 2, 20))).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("14.48")  # observed 24.14


@pytest.mark.xfail(strict=True, reason="known bug: a fee whose share moves is priced at today's amount")
async def test_a_fee_in_arrears_raised_in_the_catalog_does_not_reach_back_through_a_backdated_cancellation():
    """January and February billed at 20.00 each (PRO). The catalog raises the fee to 40.00; a
    cancellation effective 15 February, received in March, rates February again: it should
    cost 20 x 14/29 = 9.66 (a refund of 10.34); adjustment_lines prices it at 40 x 14/29 = 19.31, a
    refund of 0.69."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    first = Rater(store, [PRO], [TOKENS], GRACE, FakePublisher())
    invoices = (await first.run_once(AFTER_JAN)).invoices + (await first.run_once(AFTER_FEB)).invoices
    raised = PRO.model_copy(update={"prices": [PRO.prices[0].model_copy(update={"amount": D(40)}), PRO.prices[1]]})
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "pro", None, None, at(2024, 2, 15)))
    invoices += (await Rater(store, [raised], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_MAR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("9.66")  # observed 19.31


def _pct(rate: str):
    price = {"key": "fees", "model": "percentage", "meter": "llm_tokens", "rate": rate, "fixed_amount": "0.30"}
    return plan("pay", prices=[price])


@pytest.mark.xfail(strict=True, reason="known bug: a percentage price is compared by amount")
async def test_a_percentage_price_changed_in_the_catalog_does_not_reach_back():
    """January: 10,000 at 2.9% + 0.30 x 1 event = 290.30, invoiced. The rate goes to 3.9% in
    the catalog. No usage of January moved, yet February's invoice bills January +100.00, and
    so would every later invoice for every earlier period (compared by amount, f491ccd)."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="pay")
    store.use("cust-1", 10000, at(2024, 1, 10))
    invoices = (await Rater(store, [_pct("0.029")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)).invoices
    invoices += (await Rater(store, [_pct("0.039")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_FEB)).invoices
    assert per_period(invoices)["2024-01-01T00:00:00+00:00"] == D("290.30")  # observed 390.30
