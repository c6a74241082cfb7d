"""A plan change keeps the subscription's currency and billing interval: the rater ignores
one that would not, with a warning. Before, 31.00 USD and 4650 JPY were summed into
one total of 4681 JPY, and a yearly plan's fee was billed every month."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import (
    SubscriptionEvent,
    build_subscription,
    plan_change_problem,
    plan_change_refusal,
)
from tests.unit.test_rater import AFTER_JAN, FEB, GRACE, JAN, TOKENS, FakeBillingStore, FakePublisher, at

D = Decimal


def plan(key: str, currency: str = "USD", interval: str = "P1M", **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": currency, "billing_interval": interval, **extra})


def created(subscription: str, plan_key: str, start: datetime = JAN) -> SubscriptionEvent:
    return SubscriptionEvent(subscription, "cust-1", "created", plan_key, start, None, start)


def changed(subscription: str, plan_key: str, effective_at: datetime) -> SubscriptionEvent:
    return SubscriptionEvent(subscription, "cust-1", "changed", plan_key, None, None, effective_at)


USD = plan("usd")
USD_TOO = plan("usd-too")
JPY = plan("jpy", "JPY")
YEARLY = plan("yearly", interval="P1Y")
TWELVE_MONTHS = plan("twelve-months", interval="P12M")
PLANS = {p.key: p for p in (USD, USD_TOO, JPY, YEARLY, TWELVE_MONTHS)}


# --- the rule ---------------------------------------------------------------------------


def test_a_change_keeps_the_currency_and_the_billing_interval():
    assert plan_change_problem(USD, USD_TOO) is None
    assert plan_change_problem(YEARLY, TWELVE_MONTHS) is None  # the same length, spelt otherwise
    currency = plan_change_problem(USD, JPY)
    assert currency is not None and "JPY" in currency and "USD" in currency
    assert "cancel the subscription and create a new one" in currency
    interval = plan_change_problem(USD, YEARLY)
    assert interval is not None and "P1Y" in interval and "P1M" in interval


def test_a_change_is_compared_with_the_plan_the_subscription_was_created_on():
    assert plan_change_refusal(USD_TOO, [created("s", "usd")], PLANS) is None
    assert plan_change_refusal(JPY, [created("s", "usd")], PLANS) is not None
    # Changes effective at other times, arrived in any order, share the created plan's terms:
    # the created plan is the plan in force at any moment, as far as they go.
    stored = [created("s", "usd"), changed("s", "usd-too", at(2024, 3, 1)), changed("s", "usd", at(2024, 2, 1))]
    assert plan_change_refusal(YEARLY, stored, PLANS) is not None
    # A change to JPY stored before the rule is ignored by the rater; it does not decide.
    assert plan_change_refusal(USD_TOO, [created("s", "usd"), changed("s", "jpy", FEB)], PLANS) is None


def test_before_its_created_event_a_change_is_compared_with_the_stored_changes():
    assert plan_change_refusal(JPY, [changed("s", "usd", FEB)], PLANS) is not None
    assert plan_change_refusal(USD_TOO, [changed("s", "usd", FEB)], PLANS) is None
    assert plan_change_refusal(JPY, [], PLANS) is None  # nothing to compare with: the rater judges


# --- the rater: changes stored before the rule ------------------------------------------


def test_the_rater_ignores_a_stored_change_to_another_currency_with_a_warning():
    with capture_logs() as logs:
        sub = build_subscription("s-warned", [created("s-warned", "usd"), changed("s-warned", "jpy", FEB)], PLANS)
        build_subscription("s-warned", [created("s-warned", "usd"), changed("s-warned", "jpy", FEB)], PLANS)
    assert sub is not None and [segment.plan.key for segment in sub.segments] == ["usd"]
    assert sub.segments[0].end is None
    warned = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warned) == 1  # once per process: the rater rebuilds subscriptions every run
    assert warned[0]["subscription_id"] == "s-warned" and warned[0]["plan"] == "jpy"
    assert "JPY" in warned[0]["problem"]


async def test_a_change_to_a_plan_in_another_currency_never_adds_dollars_to_yen():
    usd = plan("usd", prices=[{"key": "base", "model": "flat", "amount": "62"}])
    jpy = plan("jpy", "JPY", prices=[{"key": "base", "model": "flat", "amount": "9300"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="usd")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "jpy", None, None, at(2024, 1, 16, 12)))
    (january,) = (await Rater(store, [usd, jpy], [TOKENS], GRACE, publish).run_once(AFTER_JAN)).invoices
    # 31.00 USD and 4650 JPY were summed into one JPY total of 4681.
    assert (january["currency"], january["subtotal"]) != ("JPY", "4681")
    assert (january["currency"], january["subtotal"]) == ("USD", "62.00")  # the change is ignored


async def test_a_change_to_a_yearly_plan_bills_its_fee_once_a_year():
    monthly = plan("monthly", prices=[{"key": "base", "model": "flat", "amount": "100"}])
    yearly = plan("yearly", interval="P1Y", prices=[{"key": "base", "model": "flat", "amount": "1200"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="monthly")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "yearly", None, None, FEB))
    invoices = (await Rater(store, [monthly, yearly], [TOKENS], GRACE, publish).run_once(at(2024, 4, 1, 2))).invoices
    # January on the monthly plan (100), then at most the yearly fee: 1200 was billed for each month.
    assert sum(D(invoice["subtotal"]) for invoice in invoices) <= D("1300")


# --- properties over plan pairs ---------------------------------------------------------

CURRENCIES = ["USD", "EUR", "JPY"]
INTERVALS = ["P1M", "P3M", "P12M", "P1Y", "P30D", "P1D", "PT1H"]
LENGTHS = {"P1M": "1 month", "P3M": "3 months", "P12M": "12 months", "P1Y": "12 months"}
LENGTHS |= {"P30D": "30 days", "P1D": "1 day", "PT1H": "1 hour"}
plans_st = st.builds(plan, st.sampled_from(["a", "b", "c"]), st.sampled_from(CURRENCIES), st.sampled_from(INTERVALS))


@settings(max_examples=200, deadline=None)
@given(plans_st, plans_st)
def test_a_change_is_refused_exactly_when_the_currency_or_the_interval_s_length_differs(old, new):
    same = old.currency == new.currency and LENGTHS[old.billing_interval] == LENGTHS[new.billing_interval]
    assert (plan_change_problem(old, new) is None) == same


def _keyed(plan_list: list[Plan]) -> dict[str, Plan]:
    return {f"p{n}": p.model_copy(update={"key": f"p{n}"}) for n, p in enumerate(plan_list)}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(plans_st, min_size=2, max_size=5),
    st.lists(st.tuples(st.integers(0, 4), st.integers(-5, 90)), min_size=1, max_size=6),
)
def test_changes_checked_at_intake_are_what_the_rater_applies(catalog, changes):
    """Created first, then changes to any plans at any times, each checked against what is
    stored when it arrives: the rater applies every change the intake took, and bills one
    currency on one interval whatever was sent."""
    plans = _keyed(catalog)
    keys = sorted(plans)
    stored = [created("s-prop", keys[0])]
    sent = [changed("s-prop", keys[n % len(keys)], JAN + timedelta(days=day)) for n, day in changes]
    taken = []
    for event in sent:
        if plan_change_refusal(plans[event.plan], stored, plans) is None:
            stored.append(event)
            taken.append(event)
    order = sorted(stored, key=lambda e: (e.effective_at, e.kind != "created"))
    sub = build_subscription("s-prop", order, plans)
    assert sub is not None
    first = plans[keys[0]]
    assert all(plan_change_problem(first, segment.plan) is None for segment in sub.segments)
    assert [e.plan for e in taken] == [e.plan for e in sent if plan_change_problem(first, plans[e.plan]) is None]
    assert sub.segments[-1].plan.key == order[-1].plan  # the last event taken is the plan in force
