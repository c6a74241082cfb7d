"""Late usage of a period with a minimum commitment (``true_up_adjustments`` in
``rating/adjustments.py``): the period's true-up is recomputed whenever the period is adjusted,
so late usage the minimum already covered is not billed again, a correction that lowers usage
raises the true-up again, and the period is billed in total what it would have been billed had
all its usage been known at its cutoff (docs/pricing.md, "Late usage")."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.rating.adjustments import true_up_adjustments
from bastionary.rating.billed import Billing
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.invoice import LEGACY_MINIMUM_KEY, MINIMUM_KEY, Line, Period, Segment, Subscription
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from bastionary.rating.tax import Invoicing, TaxProfile, TaxRate
from tests.unit.test_rater import (
    AFTER_APR,
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    APR,
    FEB,
    GRACE,
    JAN,
    MAR,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    StoreFailed,
    at,
)

D = Decimal
MONTHS = (JAN, FEB, MAR, APR)
ROUNDS = (AFTER_JAN, AFTER_FEB, AFTER_MAR, AFTER_APR)


def mini(key: str = "mini", currency: str = "USD", minimum: str = "100", unit: str = "0.01", **extra: Any) -> Plan:
    prices: list[dict[str, Any]] = [{"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": unit}]
    if "fee" in extra:
        fee = {"key": "base", "model": "flat", "amount": extra.pop("fee"), "billing_timing": extra.pop("timing")}
        prices.insert(0, fee)
    return Plan.model_validate(
        {"key": key, "currency": currency, "billing_interval": "P1M", "minimum_commitment": minimum, "prices": prices}
        | extra
    )


def per_period(invoices: list[dict[str, Any]]) -> dict[str, Decimal]:
    """What every invoice line billed, per period it bills: its invoice's, the one it adjusts,
    or the one a fee in advance pays for."""
    billed: dict[str, Decimal] = defaultdict(Decimal)
    for invoice in invoices:
        for line in invoice["lines"]:
            period = line.get("adjusts_period_start") or line.get("service_period_start") or invoice["period_start"]
            billed[period] += D(line["amount"])
    return dict(billed)


async def month_by_month(store: FakeBillingStore, plans: list[Plan], **options: Any) -> list[dict[str, Any]]:
    rater = Rater(store, plans, [TOKENS], GRACE, FakePublisher(), **options)
    invoices: list[dict[str, Any]] = []
    for now in ROUNDS:
        invoices.extend((await rater.run_once(now)).invoices)
    return invoices


# --- the review's example and its rounds -------------------------------------------------


async def test_late_usage_the_minimum_already_covered_is_not_billed_again():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.use("cust-1", 6000, at(2024, 1, 10))  # 60.00: January is trued up to 100.00
    rate = Rater(store, [mini()], [TOKENS], GRACE, publish)
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert january["subtotal"] == "100.00"
    store.use("cust-1", 2000, at(2024, 1, 31), ingested=FEB + GRACE)  # 20.00 late: 80.00, under the minimum
    (february,) = (await rate.run_once(AFTER_FEB)).invoices
    adjustments = [line for line in february["lines"] if line.get("adjusts_period_start") == JAN.isoformat()]
    # docs/pricing.md, late usage: a period is billed in total exactly its final price.
    assert D(january["subtotal"]) + sum(D(line["amount"]) for line in adjustments) == D("100.00")
    assert [(line["price_key"], line["amount"]) for line in adjustments] == [
        ("tokens", "20.00"),
        ("minimum_commitment", "-20.00"),
    ]
    assert (
        adjustments[1]["description"] == "Adjustment for 2024-01-01 00:00–2024-02-01 00:00 (Minimum commitment true-up)"
    )


async def test_rounds_of_late_usage_and_a_correction_keep_january_at_its_final_price():
    """60.00 on time (trued up by 40.00); 20.00 late (true-up 20.00); 30.00 later (110.00: no
    true-up); then a correction of -50.00 (60.00: trued up by 40.00 again)."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.use("cust-1", 6000, at(2024, 1, 10))
    store.use("cust-1", 2000, at(2024, 1, 20), ingested=FEB + GRACE)
    store.use("cust-1", 3000, at(2024, 1, 21), ingested=MAR + GRACE)
    store.use("cust-1", -5000, at(2024, 1, 22), ingested=APR + GRACE)
    invoices = await month_by_month(store, [mini()])
    true_ups = [
        line["amount"]
        for invoice in invoices
        for line in invoice["lines"]
        if line["price_key"] == "minimum_commitment" and line.get("adjusts_period_start") == JAN.isoformat()
    ]
    assert true_ups == ["-20.00", "-20.00", "40.00"]
    assert per_period(invoices)[JAN.isoformat()] == D("100.00")
    # Stored as the true-up's own key: what the period was billed per key, as a query reads it.
    assert store.billed("sub-1")[(JAN, MINIMUM_KEY)] == Billing(D(1), D("40.00"))


async def test_a_late_first_period_adjusts_against_its_prorated_minimum():
    """Started on 17 January (anchor 1 January): the minimum is 100 x 15/31 = 48.39."""
    store = FakeBillingStore()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", "mini", at(2024, 1, 17), JAN, at(2024, 1, 17)))
    store.use("cust-1", 1000, at(2024, 1, 20))  # 10.00: trued up by 38.39
    store.use("cust-1", 2500, at(2024, 1, 30), ingested=FEB + GRACE)  # 25.00 late: 35.00, true-up 13.39
    invoices = await month_by_month(store, [mini()])
    january, february = invoices[0], invoices[1]
    assert january["subtotal"] == "48.39"
    adjustments = [
        (line["price_key"], line["amount"], line["quantity"])
        for line in february["lines"]
        if line.get("adjusts_period_start") == JAN.isoformat()
    ]
    assert adjustments == [("tokens", "25.00", "2500"), ("minimum_commitment", "-25.00", "0")]
    assert per_period(invoices)[JAN.isoformat()] == D("48.39")


async def test_the_adjustments_of_a_trued_up_period_add_no_tax():
    """Late usage the minimum covered nets to nothing on the next invoice, so it is taxed
    nothing: the period was taxed on its minimum already."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    store.use("cust-1", 6000, at(2024, 1, 10))
    store.use("cust-1", 2000, at(2024, 1, 31), ingested=FEB + GRACE)
    store.use("cust-1", 12000, at(2024, 2, 10))  # February: 120.00, above its minimum
    vat = Invoicing(taxes=[TaxRate(key="vat", name="VAT 19%", rate=D("0.19"))])
    january, february, *_ = await month_by_month(store, [mini()], invoicing=vat)
    assert (january["subtotal"], january["tax"]) == ("100.00", "19.00")
    assert (february["subtotal"], february["tax"]) == ("120.00", "22.80")


async def test_a_rerun_after_a_crash_bills_the_true_up_adjustment_once():
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.use("cust-1", 6000, at(2024, 1, 10))
    store.use("cust-1", 2000, at(2024, 1, 31), ingested=FEB + GRACE)
    rate = Rater(store, [mini()], [TOKENS], GRACE, FakePublisher())
    january = (await rate.run_once(AFTER_JAN)).invoices
    store.fail_store_before = "invoices"  # February's lines are written, its invoice row is not
    with pytest.raises(StoreFailed):
        await rate.run_once(AFTER_FEB)
    store.fail_store_before = None
    february = (await rate.run_once(AFTER_FEB)).invoices
    assert (await rate.run_once(AFTER_FEB)).invoices == []
    march = (await rate.run_once(AFTER_MAR)).invoices
    assert per_period(january + february + march)[JAN.isoformat()] == D("100.00")
    assert not [line for line in march[0]["lines"] if line.get("adjusts_period_start")]


async def test_the_final_adjustment_of_an_ended_subscription_recomputes_the_true_up():
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "mini", None, None, FEB))
    store.use("cust-1", 6000, at(2024, 1, 10))
    store.use("cust-1", 2000, at(2024, 1, 31), ingested=FEB + GRACE + timedelta(minutes=5))
    january, final = (await Rater(store, [mini()], [TOKENS], GRACE, FakePublisher()).run_once(FEB + 4 * GRACE)).invoices
    assert final["kind"] == "final_adjustment"
    assert [(line["price_key"], line["amount"]) for line in final["lines"]] == [
        ("tokens", "20.00"),
        ("minimum_commitment", "-20.00"),
    ]
    assert per_period([january, final]) == {JAN.isoformat(): D("100.00")}


# --- changes that move no usage: a backdated plan change's fee, a backdated cancellation ----


async def test_a_backdated_plan_change_keeps_a_period_at_its_minimum():
    a, b = mini("a", fee="30", timing="advance"), mini("b", fee="60", timing="advance")
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.use("cust-1", 2000, at(2024, 1, 10))  # 30.00 fee + 20.00 usage: trued up to 100.00
    rate = Rater(store, [a, b], [TOKENS], GRACE, publish)
    invoices = (await rate.run_once(AFTER_JAN)).invoices
    assert per_period(invoices)[JAN.isoformat()] == D("100.00")
    # A change to b from 16 January arrives in February: January's charges become 65.49,
    # still under the minimum, so January still costs 100.00 (it was billed 115.49).
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 1, 16)))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[JAN.isoformat()] == D("100.00")


async def test_a_backdated_cancellation_prorates_the_minimum_without_usage_after_it():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.use("cust-1", 3000, at(2024, 2, 5))  # 30.00, before the cancellation point
    rate = Rater(store, [mini()], [TOKENS], GRACE, publish)
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    # Effective 15 February, received after February was invoiced: February commits to 14/29
    # of the minimum (48.28), as it does when usage after the 15th is moved by the cut.
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "mini", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(at(2024, 3, 10))).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("48.28")


async def test_the_final_adjustment_leaves_a_last_period_whose_share_did_not_move():
    """The cancellation was known when January was invoiced (trued up for its whole share):
    the final adjustment finds the share unchanged, and a minimum raised in the catalog since
    does not reach back."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "mini", None, None, FEB))
    store.use("cust-1", 6000, at(2024, 1, 10))
    (january,) = (await Rater(store, [mini()], [TOKENS], GRACE, publish).run_once(AFTER_JAN)).invoices
    raised = Rater(store, [mini(minimum="150")], [TOKENS], GRACE, publish)
    (final,) = (await raised.run_once(FEB + 4 * GRACE)).invoices
    assert final["kind"] == "final_adjustment"
    assert final["lines"] == []
    assert per_period([january, final]) == {JAN.isoformat(): D("100.00")}


async def test_a_backdated_cancellation_credits_back_a_whole_period_invoiced_after_it():
    """March was invoiced (10.00 of usage, trued up to 100.00) before a cancellation effective
    15 February arrived: March never came, so everything billed for it is credited back."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="mini")
    store.use("cust-1", 3000, at(2024, 2, 5))
    store.use("cust-1", 1000, at(2024, 3, 5))
    rate = Rater(store, [mini()], [TOKENS], GRACE, publish)
    invoices = []
    for now in (AFTER_JAN, AFTER_FEB, AFTER_MAR):
        invoices += (await rate.run_once(now)).invoices
    assert per_period(invoices)[MAR.isoformat()] == D("100.00")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "mini", None, None, at(2024, 2, 15)))
    (final,) = (await rate.run_once(at(2024, 4, 10))).invoices
    assert final["kind"] == "final_adjustment"
    assert [(line["price_key"], line["amount"], line["adjusts_period_start"]) for line in final["lines"]] == [
        ("tokens", "-10.00", MAR.isoformat()),
        ("minimum_commitment", "-90.00", MAR.isoformat()),
        ("minimum_commitment", "-51.72", FEB.isoformat()),
    ]
    assert per_period([*invoices, final]) == {
        JAN.isoformat(): D("100.00"),
        FEB.isoformat(): D("48.28"),
        MAR.isoformat(): D("0.00"),
    }


# --- true_up_adjustments on its own -----------------------------------------------------

JANUARY = Period(0, JAN, FEB, FEB)


def subscription(plan: Plan) -> Subscription:
    return Subscription("sub-1", "cust-1", JAN, (Segment(plan, JAN),))


def usage_adjustment(amount: str) -> Line:
    line = Line("tokens", "llm_tokens", "Adjustment", D(0), D(amount), line_key="mini:tokens")
    return replace(line, period_start=JAN)


def test_a_true_up_stored_before_it_had_a_key_counts_as_billed():
    """Invoices rated before the true-up had its own line key stored it under ""."""
    billed = {(JAN, "mini:tokens"): Billing(D(6000), D("60.00")), (JAN, LEGACY_MINIMUM_KEY): Billing(D(1), D("40.00"))}
    (line,) = true_up_adjustments(subscription(mini()), [JANUARY], [usage_adjustment("20.00")], billed, "USD")
    assert (line.line_key, line.amount, line.quantity, line.period_start) == (MINIMUM_KEY, D("-20.00"), D(0), JAN)


def test_a_period_not_adjusted_keeps_its_true_up():
    """Only the periods this invoice adjusts are trued up again: a plan's minimum changed in
    the catalog since does not reach back to periods without late usage."""
    billed = {(JAN, "mini:tokens"): Billing(D(6000), D("60.00")), (JAN, MINIMUM_KEY): Billing(D(1), D("40.00"))}
    assert true_up_adjustments(subscription(mini(minimum="150")), [JANUARY], [], billed, "USD") == []


@pytest.mark.parametrize(
    ("late", "amount", "quantity"),
    [
        pytest.param("50.00", "-40.00", "-1", id="the-true-up-goes"),
        pytest.param("39.99", "-39.99", "0", id="a-cent-of-it-stays"),
    ],
)
def test_the_true_up_quantity_is_the_share_while_there_is_one(late, amount, quantity):
    billed = {(JAN, "mini:tokens"): Billing(D(6000), D("60.00")), (JAN, MINIMUM_KEY): Billing(D(1), D("40.00"))}
    (line,) = true_up_adjustments(subscription(mini()), [JANUARY], [usage_adjustment(late)], billed, "USD")
    assert (line.amount, line.quantity) == (D(amount), D(quantity))


def test_a_prorated_minimum_in_yen_is_whole_yen():
    """Started on 17 January: 10000 JPY x 15/31 = 4838.71, committed as 4839. Usage of 1000
    was trued up by 3839; 3838 more late leave 1 yen of it."""
    plan = mini(currency="JPY", minimum="10000", unit="1")
    sub = Subscription("sub-1", "cust-1", JAN, (Segment(plan, at(2024, 1, 17)),))
    billed = {(JAN, "mini:tokens"): Billing(D(1000), D(1000)), (JAN, MINIMUM_KEY): Billing(D(15) / D(31), D(3839))}
    (line,) = true_up_adjustments(sub, [JANUARY], [usage_adjustment("3838")], billed, "JPY")
    assert (line.amount, line.quantity) == (D(-3838), D(0))
    assert line.description.endswith("(Minimum commitment true-up, prorated 0.4839)")


# --- the rule, for any usage arriving on time or late -----------------------------------


@dataclass(frozen=True)
class Scenario:
    plans: tuple[Plan, ...]
    events: tuple[SubscriptionEvent, ...]
    readings: tuple[tuple[int, datetime, datetime], ...]  # tokens, time, ingested
    crash: tuple[int, str] | None  # a round whose store fails before that step, then is run again
    canceled_at: datetime | None

    @property
    def rounds(self) -> list[datetime]:
        """After each month's cutoff, and after an ended subscription's final cutoff."""
        if self.canceled_at is None:
            return list(ROUNDS)
        return sorted({*ROUNDS, self.canceled_at + 3 * GRACE})

    def store(self, on_time: bool) -> FakeBillingStore:
        store = FakeBillingStore()
        store.events.extend(self.events)
        if self.canceled_at is not None:
            store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, self.canceled_at))
        for tokens, time, ingested in self.readings:
            if self.canceled_at is None or ingested < self.canceled_at + 2 * GRACE:  # never billed, however late
                store.use("cust-1", tokens, time, ingested=time if on_time else ingested)
        return store


# (currency, minimum, unit amount, fee): amounts in the currency's scale, with rounding to do
CURRENCIES = [("USD", "100", "0.013", "30"), ("JPY", "10000", "1.3", "3000"), ("BHD", "100", "0.0013", "30")]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """One subscription on a plan with a minimum (and maybe a fee, in arrears or in advance),
    maybe starting late in January, maybe changed mid-period to a plan with another minimum,
    maybe canceled (on a period boundary or within a period); usage and negative corrections
    in January to March, each on time or one to three cutoffs late (by April's cutoff at most;
    an ended subscription's usage by its final cutoff)."""
    currency, minimum, unit, fee = draw(st.sampled_from(CURRENCIES))
    extra = {"fee": fee, "timing": draw(st.sampled_from(["arrears", "advance"]))} if draw(st.booleans()) else {}
    first = mini("a", currency, minimum, unit, **extra)
    second = mini("b", currency, str(D(minimum) * 2), str(D(unit) * 2), prorate=draw(st.booleans()))
    start = draw(st.sampled_from([JAN, at(2024, 1, 17)]))
    events = [SubscriptionEvent("sub-1", "cust-1", "created", "a", start, JAN, start)]
    if draw(st.booleans()):
        changed = JAN + timedelta(days=draw(st.integers(17, 80)), hours=draw(st.integers(0, 23)))
        events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, changed))
    readings = []
    for _ in range(draw(st.integers(0, 8))):
        month = draw(st.integers(0, 2))
        time = MONTHS[month] + timedelta(minutes=draw(st.integers(0, 28 * 24 * 60)))
        late = draw(st.integers(0, 3 - month))
        ingested = time if late == 0 else MONTHS[month + late] + GRACE + timedelta(minutes=draw(st.integers(0, 600)))
        readings.append((draw(st.integers(-4000, 9000)), time, ingested))
    crash = draw(st.none() | st.tuples(st.integers(0, 3), st.sampled_from(["lines", "ledger", "invoices"])))
    canceled_at = draw(st.none() | st.sampled_from([FEB, MAR, APR, at(2024, 2, 15, 12), at(2024, 3, 10)]))
    return Scenario((first, second), tuple(events), tuple(readings), crash, canceled_at)


async def billed_late(scenario: Scenario) -> list[dict[str, Any]]:
    store = scenario.store(on_time=False)
    rater = Rater(store, list(scenario.plans), [TOKENS], GRACE, FakePublisher())
    invoices: list[dict[str, Any]] = []
    for n, now in enumerate(scenario.rounds):
        if scenario.crash is not None and scenario.crash[0] == n:
            store.fail_store_before = scenario.crash[1]
            with contextlib.suppress(StoreFailed):  # (a round with nothing to rate stores nothing)
                invoices.extend((await rater.run_once(now)).invoices)
            store.fail_store_before = None
        invoices.extend((await rater.run_once(now)).invoices)
        assert (await rater.run_once(now)).invoices == []  # a rerun bills nothing more
    return invoices


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_a_period_is_billed_in_total_what_it_costs_with_all_its_usage_known(scenario):
    late = asyncio.run(billed_late(scenario))
    rater = Rater(scenario.store(on_time=True), list(scenario.plans), [TOKENS], GRACE, FakePublisher())
    once = asyncio.run(rater.run_once(scenario.rounds[-1])).invoices
    assert per_period(late) == per_period(once)
