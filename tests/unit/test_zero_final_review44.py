"""Rating bug found in the forty-fourth session's review: a final adjustment or an advance
invoice whose lines all bill 0.00 (a free plan's span moved) was published and listed, though
with nothing to bill it is stored ``empty`` and never told to anyone. Its lines still count as
billed: they hold the spans later adjustments net against."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from bastionary.rating.plans import Plan
from bastionary.rating.rater import EMPTY, Rater, RatingResult
from bastionary.rating.schedule import FINAL_ADJUSTMENT
from bastionary.rating.subscriptions import SubscriptionEvent

from .test_rater import GRACE, TOKENS, FakeBillingStore, FakePublisher, at

APRIL, MAY = at(2024, 4, 1), at(2024, 5, 1)


def flat_plan(key: str, fee: str, timing: str = "arrears") -> Plan:
    return Plan.model_validate(
        {
            "key": key,
            "currency": "USD",
            "billing_interval": "P1M",
            "prices": [{"key": "base", "model": "flat", "amount": fee, "billing_timing": timing}],
        }
    )


def change(kind: str, plan: str, effective: int) -> SubscriptionEvent:
    return SubscriptionEvent("sub-1", "cust-1", kind, plan, None, None, at(2024, 4, effective))


async def test_a_final_adjustment_moving_only_a_free_plans_span_is_stored_empty_and_never_published() -> None:
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", start=APRIL, plan="paid")
    store.events.append(change("changed", "free", 10))
    rate = Rater(store, [flat_plan("paid", "10"), flat_plan("free", "0")], [TOKENS], GRACE, publish)
    (april,) = (await rate.run_once(MAY + timedelta(hours=2))).invoices
    assert (april["kind"], april["status"], april["total"]) == ("period", "finalized", "3.00")
    # Canceled on the 20th, received after April's invoice billed the free plan to the 30th.
    store.events.append(change("canceled", "free", 20))

    (final,) = (await rate.run_once(MAY + timedelta(hours=5))).invoices

    assert (final["kind"], final["status"], final["total"]) == (FINAL_ADJUSTMENT, EMPTY, "0.00")
    assert [(line["quantity"], line["amount"]) for line in final["lines"]] == [("-0.366666667", "0.00")]
    assert [event["data"]["kind"] for event in publish.events("invoices")] == ["period"]
    # The span it gives back stays recorded: the free plan's April share is billed to the 20th.
    assert store.billed("sub-1")[(APRIL, "free:base")].quantity == Decimal("0.333333333")
    assert await rate.run_once(at(2024, 6, 1)) == RatingResult([])


async def test_an_advance_invoice_of_a_free_fee_is_stored_empty_with_its_lines_billed() -> None:
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", start=APRIL, plan="free")
    rate = Rater(store, [flat_plan("free", "0", "advance")], [TOKENS], GRACE, publish)

    (advance,) = (await rate.run_once(APRIL + timedelta(hours=1))).invoices

    assert (advance["kind"], advance["status"], advance["total"]) == ("advance", EMPTY, "0.00")
    assert [(line["quantity"], line["amount"]) for line in advance["lines"]] == [("1", "0.00")]
    assert publish.events("invoices") == []
    assert store.billed("sub-1")[(APRIL, "free:base")].quantity == Decimal(1)
