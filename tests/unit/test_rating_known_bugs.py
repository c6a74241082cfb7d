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
from tests.unit.test_rater import (
    AFTER_JAN,
    GRACE,
    PRO,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)
from tests.unit.test_tax_of_adjustments import ADV, _vat

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
