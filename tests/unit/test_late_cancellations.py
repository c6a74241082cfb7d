"""Cancellations received after invoices billed the subscription as running past them: what
was billed for before the cancellation, on time, stays billed, and what was billed for after it
is credited back (docs/pricing.md, "Late usage"; README, "an ended subscription")."""

from __future__ import annotations

from datetime import datetime

from bastionary.rating.schedule import FINAL_ADJUSTMENT, final_adjustment, last_cutoff
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_rater import (
    AFTER_FEB,
    AFTER_JAN,
    APR,
    FEB,
    GRACE,
    JAN,
    MAR,
    PRO,
    FakeBillingStore,
    FakePublisher,
    at,
    rater,
)


def _canceled(effective: datetime, received: datetime) -> SubscriptionEvent:
    return SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, effective, received)


def _tokens(store: FakeBillingStore, period: datetime) -> tuple[str, str]:
    billing = store.billed("sub-1")[(period, "pro:tokens")]
    return f"{billing.quantity:f}".rstrip("0").rstrip("."), f"{billing.amount:f}"


async def test_a_backdated_cancellation_leaves_usage_before_it_billed_on_time_billed():
    """January was invoiced whole, as of its cutoff (1 February 01:00), before a cancellation
    effective 15 January arrived. The final adjustment read January again as of a cutoff from
    the cut end (15 January 02:00): the 500 tokens of 14 January 23:00, ingested 5 hours later,
    billed on time, were given back."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    store.use("cust-1", 1000, at(2024, 1, 10))
    store.use("cust-1", 500, at(2024, 1, 14, 23), ingested=at(2024, 1, 15, 4))
    store.use("cust-1", 2000, at(2024, 1, 20))  # after the cancellation: given back
    (january,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices
    assert january["subtotal"] == "55.00"
    store.events.append(_canceled(at(2024, 1, 15), at(2024, 2, 10)))
    (final,) = (await rater(store, publish).run_once(at(2024, 2, 10, 1))).invoices
    assert final["kind"] == FINAL_ADJUSTMENT
    assert _tokens(store, JAN) == ("1500", "15.00")


async def test_a_cancellation_at_a_period_boundary_received_later_leaves_late_usage_billed_since():
    """Effective 1 February, received in March: January is not cut, yet the final adjustment read
    it as of 1 February 02:00 and gave back the 300 late tokens February's invoice had billed."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    store.use("cust-1", 1000, at(2024, 1, 10))
    store.use("cust-1", 300, at(2024, 1, 31, 12), ingested=at(2024, 2, 5))
    store.use("cust-1", 200, at(2024, 2, 10))
    for now in (AFTER_JAN, AFTER_FEB):
        await rater(store, publish).run_once(now)
    store.events.append(_canceled(FEB, at(2024, 3, 10)))
    (final,) = (await rater(store, publish).run_once(at(2024, 3, 10, 1))).invoices
    assert [(line["amount"], line["adjusts_period_start"]) for line in final["lines"]] == [
        ("-20.00", FEB.isoformat()),  # February never came: its fee and usage are credited back
        ("-2.00", FEB.isoformat()),
    ]
    assert _tokens(store, JAN) == ("1300", "13.00")


async def test_a_cancellation_effective_in_periods_a_backfill_skipped_credits_back_what_was_billed_after_it():
    """Loaded on 10 March without backfill (January and February are not rated), March billed
    30.00; a cancellation effective 15 February arriving in April left no period to adjust, so
    no final adjustment was issued and March stayed billed."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", "pro", JAN, None, JAN, at(2024, 3, 10)))
    store.use("cust-1", 1000, at(2024, 3, 12))
    (march,) = (await rater(store, publish).run_once(at(2024, 4, 1, 2))).invoices
    assert (march["period_start"], march["subtotal"]) == (MAR.isoformat(), "30.00")
    store.events.append(_canceled(at(2024, 2, 15), at(2024, 4, 5)))
    (final,) = (await rater(store, publish).run_once(at(2024, 4, 5, 1))).invoices
    assert (final["kind"], final["subtotal"], final["carried_forward"]) == (FINAL_ADJUSTMENT, "-30.00", "30.00")
    assert {line["adjusts_period_start"] for line in final["lines"]} == {MAR.isoformat()}
    assert all(billing.amount == 0 for billing in store.billed("sub-1").values())
    assert (await rater(store, publish).run_once(at(2024, 9, 1))).invoices == []  # once


async def test_a_cancellation_into_skipped_periods_with_nothing_billed_after_it_ends_the_subscription_empty():
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", "pro", JAN, None, JAN, at(2024, 3, 10)))
    store.events.append(_canceled(at(2024, 2, 15), at(2024, 3, 10)))
    result = await rater(store, publish).run_once(APR)
    assert [(d["kind"], d["status"]) for d in result.invoices] == [(FINAL_ADJUSTMENT, "empty")]
    assert publish.invoices() == []
    assert (await rater(store, publish).run_once(at(2024, 9, 1))).invoices == []


def test_the_final_cutoff_follows_what_was_billed_past_a_cancellation_known_late():
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.events.append(_canceled(at(2024, 1, 15), at(2024, 2, 10)))
    (ended,) = store.subscriptions({"pro": PRO})
    periods, cutoff = final_adjustment(ended, at(2030, 1, 1), GRACE)
    assert cutoff == at(2024, 1, 15, 2)  # known in time: from the cut end
    assert last_cutoff(periods[-1], GRACE, at(2024, 1, 10)) == at(2024, 1, 15, 1)  # billed no further: as is
    periods, cutoff = final_adjustment(ended, at(2030, 1, 1), GRACE, FEB)
    assert cutoff == at(2024, 2, 1, 2)  # billed as running to 1 February: that cutoff, plus the grace
    assert final_adjustment(ended, at(2024, 2, 1, 1, 59), GRACE, FEB) is None
