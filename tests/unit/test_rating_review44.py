"""Rating bugs found by the review of 2026-12-07 (forty-fourth session), each confirmed by a
script first (/tmp/review44_rating/) and stated here as a test that failed before its fix."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.service_windows import ServiceWindow, fee_unchanged
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import GRACE, TOKENS, FakeBillingStore, FakePublisher, at

D = Decimal
APR, MAY, JUN = at(2024, 4, 1), at(2024, 5, 1), at(2024, 6, 1)  # April has 30 days


def _arrears(key: str, fee: str) -> Plan:
    price = {"key": "base", "model": "flat", "amount": fee}
    return Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", "prices": [price]})


def test_a_fee_on_half_a_cent_is_seen_unchanged():
    """19.95 for 1 day of April's 30 is 0.665, billed 0.67; the share is kept as 0.033333333,
    which at 19.95 rounds to 0.66. The fee did not change."""
    window = ServiceWindow(APR, at(2024, 4, 2), D("0.033333333"), D("0.67"))
    assert fee_unchanged(D("19.95"), [window], "USD")
    assert not fee_unchanged(D("19.94"), [window], "USD")
    given_back = ServiceWindow(APR, at(2024, 4, 2), D("-0.033333333"), D("-0.67"))
    assert fee_unchanged(D("19.95"), [given_back], "USD")


async def test_a_span_given_back_of_a_fee_on_half_a_cent_bills_what_rating_it_afresh_bills():
    """a (19.95) -> b (free) on 2 April, on time: April bills a 0.67 for its day. A
    cancellation effective 1 April 12:00 arrives after April's invoice: a's half day is
    19.95 / 60 = 0.3325, 0.33, as rating April with the cancellation known gives. The fee was
    seen as changed (0.033333333 x 19.95 rounds to 0.66, not the 0.67 billed), and the half
    day was credited at half of what was paid: April stayed 0.34."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", start=APR, plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 4, 2)))
    rate = Rater(store, [_arrears("a", "19.95"), _arrears("b", "0")], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(MAY + 2 * GRACE)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "b", None, None, at(2024, 4, 1, 12)))
    invoices += (await rate.run_once(JUN + timedelta(hours=5))).invoices
    assert per_period(invoices)[APR.isoformat()] == D("0.33")


async def test_a_refund_of_a_fee_in_advance_names_the_period_it_gives_back():
    """seats (12.00, in advance) billed on March's invoice for April; a cancellation effective
    17 March arrives on 11 April. The final adjustment gives April's whole fee back: its line
    named April 1 .. April 1, which the invoice page shows as a refund for 1 April alone."""
    plan = Plan.model_validate(
        {
            "key": "a",
            "currency": "USD",
            "billing_interval": "P1M",
            "prices": [{"key": "seats", "model": "flat", "amount": "12", "billing_timing": "advance"}],
        }
    )
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", start=at(2024, 3, 1), plan="a")
    rate = Rater(store, [plan], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(APR + 2 * GRACE)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 3, 17)))
    invoices += (await rate.run_once(at(2024, 4, 11))).invoices
    refunds = [line for line in invoices[-1]["lines"] if line["description"].startswith("Refund")]
    assert [(r["amount"], r["service_period_start"], r["service_period_end"]) for r in refunds] == [
        ("-12.00", APR.isoformat(), MAY.isoformat())
    ]
