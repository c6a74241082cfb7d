"""A plan change keeps the subscription's currency and billing interval: the intake refuses
one that would not (``incompatible_plan``, on ``billing.dlq``), and the rater ignores one
stored before that rule, with a warning. Before, 31.00 USD and 4650 JPY were summed into
one total of 4681 JPY, and a yearly plan's fee was billed every month."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bastionary.rating.events import InvalidBillingEvent, SubscriptionData, check_plan_change
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.rows import SubscriptionRow
from bastionary.rating.subscriptions import (
    SubscriptionEvent,
    build_subscription,
    plan_change_problem,
    plan_change_refusal,
)
from bastionary.worker.services.billing import BillingService
from tests.unit.test_intake_guard import App, DeadLetters, Message, Stream
from tests.unit.test_rater import AFTER_FEB, AFTER_JAN, FEB, GRACE, JAN, TOKENS, FakeBillingStore, FakePublisher, at

D = Decimal


def plan(key: str, currency: str = "USD", interval: str = "P1M", **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": currency, "billing_interval": interval, **extra})


# When the created event was stored. A change received before it came when the intake had
# nothing to check it against; one received after it was checked (or stored before the rule).
CREATED_RECEIVED = at(2024, 1, 2)
BEFORE_CREATED = at(2024, 1, 1, 12)


def created(subscription: str, plan_key: str, start: datetime = JAN) -> SubscriptionEvent:
    return SubscriptionEvent(subscription, "cust-1", "created", plan_key, start, None, start, CREATED_RECEIVED)


def changed(
    subscription: str, plan_key: str, effective_at: datetime, received: datetime | None = None
) -> SubscriptionEvent:
    return SubscriptionEvent(subscription, "cust-1", "changed", plan_key, None, None, effective_at, received)


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


def test_the_intake_check_raises_incompatible_plan():
    data = SubscriptionData(subscription_id="s", customer_id="cust-1", plan="jpy", effective_at=FEB)
    with pytest.raises(InvalidBillingEvent) as refused:
        check_plan_change(data, [created("s", "usd")], PLANS)
    assert refused.value.code == "incompatible_plan"
    assert str(refused.value).startswith("subscription 's': plan 'jpy' bills in JPY")
    check_plan_change(data.model_copy(update={"plan": "usd-too"}), [created("s", "usd")], PLANS)


# --- the rater: changes stored before the rule ------------------------------------------


def test_the_rater_ignores_a_change_to_another_currency_that_came_before_its_created_event():
    early = changed("s-warned", "jpy", FEB, BEFORE_CREATED)
    with capture_logs() as logs:
        sub = build_subscription("s-warned", [created("s-warned", "usd"), early], PLANS)
        build_subscription("s-warned", [created("s-warned", "usd"), early], PLANS)
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
    store.events.append(created("sub-1", "usd"))
    store.events.append(changed("sub-1", "jpy", at(2024, 1, 16, 12), BEFORE_CREATED))
    (january,) = (await Rater(store, [usd, jpy], [TOKENS], GRACE, publish).run_once(AFTER_JAN)).invoices
    # 31.00 USD and 4650 JPY were summed into one JPY total of 4681.
    assert (january["currency"], january["subtotal"]) != ("JPY", "4681")
    assert (january["currency"], january["subtotal"]) == ("USD", "62.00")  # the change is ignored


async def test_a_change_to_a_yearly_plan_bills_its_fee_once_a_year():
    monthly = plan("monthly", prices=[{"key": "base", "model": "flat", "amount": "100"}])
    yearly = plan("yearly", interval="P1Y", prices=[{"key": "base", "model": "flat", "amount": "1200"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(created("sub-1", "monthly"))
    store.events.append(changed("sub-1", "yearly", FEB, BEFORE_CREATED))
    invoices = (await Rater(store, [monthly, yearly], [TOKENS], GRACE, publish).run_once(at(2024, 4, 1, 2))).invoices
    # January on the monthly plan (100), then at most the yearly fee: 1200 was billed for each month.
    assert sum(D(invoice["subtotal"]) for invoice in invoices) <= D("1300")


# --- before the start --------------------------------------------------------------------


def canceled(subscription: str, effective_at: datetime) -> SubscriptionEvent:
    return SubscriptionEvent(subscription, "cust-1", "canceled", "", None, None, effective_at, effective_at)


async def test_a_cancellation_effective_before_the_start_bills_nothing():
    # Created on 15 January to start on 1 February, canceled on the 20th: the cancellation
    # sorts before the created event (effective at the start) and was dropped for want of a
    # subscription, which then billed every month.
    fees = plan("fees", prices=[{"key": "base", "model": "flat", "amount": "30"}])
    store, publish = FakeBillingStore(), FakePublisher()
    store.events += [created("sub-1", "fees", start=FEB), canceled("sub-1", at(2024, 1, 20))]
    (sub,) = store.subscriptions({"fees": fees})
    assert sub.canceled_at == at(2024, 1, 20)
    assert [(s.start, s.end) for s in sub.segments] == [(FEB, FEB)]
    rater = Rater(store, [fees], [TOKENS], GRACE, publish)
    billed = [await rater.run_once(now) for now in (AFTER_FEB, at(2024, 4, 1, 2))]
    assert sum(D(invoice["subtotal"]) for result in billed for invoice in result.invoices) == 0


def test_a_change_effective_before_the_start_is_the_plan_from_the_start():
    for at_the_start in (at(2024, 1, 20), FEB):  # before it, or with it (once ordered by event id)
        sub = build_subscription("s", [changed("s", "usd-too", at_the_start), created("s", "usd", start=FEB)], PLANS)
        assert sub is not None and [(s.plan.key, s.start) for s in sub.segments] == [("usd-too", FEB)]


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
    order = sorted(stored, key=lambda e: (e.effective_at, e.kind != "created"))  # as the store reads them
    sub = build_subscription("s-prop", order, plans)
    assert sub is not None
    first = plans[keys[0]]
    assert all(plan_change_problem(first, segment.plan) is None for segment in sub.segments)
    assert [e.plan for e in taken] == [e.plan for e in sent if plan_change_problem(first, plans[e.plan]) is None]
    # The created event applies first (a change effective before the start applies at it),
    # then the changes in effective order: the last change taken is the plan in force.
    applied = sorted(stored, key=lambda e: (e.kind != "created", e.effective_at))
    assert sub.segments[-1].plan.key == applied[-1].plan


# --- the worker's intake ----------------------------------------------------------------


class SubscriptionStore:
    """What the billing service's subscription intake uses of ClickHouseBillingStore."""

    def __init__(self) -> None:
        self.rows: list[SubscriptionRow] = []

    def insert_subscription_events(self, rows: list[SubscriptionRow]) -> None:
        self.rows.extend(rows)

    def subscription_events(self, subscription_id: str) -> list[SubscriptionEvent]:
        mine = sorted((r for r in self.rows if r.subscription_id == subscription_id), key=lambda r: r.effective_at)
        return [
            SubscriptionEvent(r.subscription_id, r.customer_id, r.event_type, r.plan, r.start, None, r.effective_at)
            for r in mine
        ]


def subscription_record(offset: int, kind: str, plan_key: str, when: datetime) -> Message:
    data = {"subscription_id": "sub-1", "customer_id": "cust-1", "plan": plan_key}
    data |= {"start": when.isoformat()} if kind == "created" else {"effective_at": when.isoformat()}
    event = {
        "specversion": "1.0",
        "id": f"evt-{offset}",
        "source": "test",
        "type": f"bastionary.subscription.{kind}.v1",
        "time": when.isoformat(),
        "data": data,
    }
    return Message(offset, orjson.dumps(event))


def test_the_billing_service_dead_letters_a_change_to_another_currency_or_interval():
    dead_letters, store, app = DeadLetters(), SubscriptionStore(), App()
    ctx = SimpleNamespace(
        app=app,
        dead_letter=dead_letters,
        topics=SimpleNamespace(billing_dlq="t.billing.dlq"),
        latest_time=lambda m: None,
    )
    service = BillingService(ctx, SimpleNamespace(plans=list(PLANS.values())), lambda: store)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        subscription_record(0, "changed", "usd-too", start + timedelta(days=40)),  # before its created
        subscription_record(1, "created", "usd", start),
        subscription_record(2, "changed", "jpy", start + timedelta(days=10)),
        subscription_record(3, "changed", "yearly", start + timedelta(days=20)),
        subscription_record(4, "changed", "usd", start + timedelta(days=30)),
    ]
    stream = Stream(records)
    asyncio.run(service._subscription_intake(stream))
    assert [(sent[1], sent[2]) for sent in dead_letters.sent] == [(2, "incompatible_plan"), (3, "incompatible_plan")]
    assert "cancel the subscription and create a new one" in dead_letters.sent[0][3]
    assert [(row.event_type, row.plan) for row in store.rows] == [
        ("changed", "usd-too"),
        ("created", "usd"),
        ("changed", "usd"),
    ]
    assert stream.acked == [0, 1, 2, 3, 4] and not app.crashes


# --- changes stored before the rule: billed as they were ----------------------------------


@pytest.mark.parametrize(
    "new",
    [plan("per-year", interval="P1Y"), plan("yen", "JPY")],
    ids=["changed-to-another-interval", "changed-to-another-currency"],
)
async def test_a_change_stored_before_the_rule_is_applied_as_it_was_billed(new):
    """Such a change, received after its created event, was taken (the intake did not check
    then) and its periods invoiced split at it. Ignoring it now would price the usage after it
    under the old plan, and bill it again as late usage (found by review)."""
    monthly = plan("monthly")
    catalog = [monthly, new]
    tokens = {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "1"}
    catalog = [p.model_validate(p.model_dump() | {"prices": [tokens]}) for p in catalog]
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(created("sub-1", "monthly"))
    store.events.append(changed("sub-1", new.key, at(2024, 1, 16), received=at(2024, 1, 16)))
    store.use("cust-1", 10, at(2024, 1, 10))
    store.use("cust-1", 10, at(2024, 1, 20))
    (january,) = (await Rater(store, catalog, [TOKENS], GRACE, publish).run_once(AFTER_JAN)).invoices
    assert [line["price_key"] for line in january["lines"]] == ["tokens", "tokens"]  # split at the change
    rerated = (await Rater(store, catalog, [TOKENS], GRACE, publish).run_once(AFTER_FEB)).invoices
    adjusted = [line for d in rerated for line in d["lines"] if line.get("adjusts_period_start") == JAN.isoformat()]
    assert adjusted == []
