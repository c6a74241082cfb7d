"""Credit limits (``rating/spend.py`` and the monitor): exposure, the events it calls for,
once each, and the entitlement answer while the limit is reached."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from structlog.testing import capture_logs

from bastionary.entitlements.evaluate import check
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.spend import CreditLimit, SpendEvent, SpendHistory, plan_limits, spend_events
from bastionary.rating.spend_monitor import SpendMonitor

from .test_openapi_document import NOW as ENTITLEMENT_NOW
from .test_openapi_document import state
from .test_rater import (
    AFTER_JAN,
    GRACE,
    PRO,
    TOKENS,
    UNPRICEABLE,
    FakeBillingStore,
    FakePublisher,
    one_customer,
    rater,
)

D = Decimal
NOW = datetime(2026, 3, 5, tzinfo=UTC)
PERIOD = datetime(2026, 3, 1, tzinfo=UTC)
LIMIT = CreditLimit(currency="USD", amount=D("100.00"), alert_at=[D("0.8"), D("0.5")])


def kinds(events: list[SpendEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.share) for e in events]


def remember(history: SpendHistory, events: list[SpendEvent]) -> SpendHistory:
    for event in events:
        if event.kind == "threshold_crossed":
            history.alerts.add((event.share, event.data["period_start"] or ""))
        else:
            history.changes += 1
    return history


def test_each_share_once_per_period_and_reached_then_restored():
    history = SpendHistory()
    first = spend_events("c1", LIMIT, D(30), D(25), PERIOD, history, NOW)  # 55: past 0.5
    assert kinds(first) == [("threshold_crossed", "0.5")]
    again = spend_events("c1", LIMIT, D(30), D(25), PERIOD, remember(history, first), NOW)
    assert again == []  # nothing twice
    over = spend_events("c1", LIMIT, D(60), D(45), PERIOD, history, NOW)  # 105
    assert kinds(over) == [("threshold_crossed", "0.8"), ("reached", "1")]
    remember(history, over)
    assert history.reached
    paid = spend_events("c1", LIMIT, D(0), D(45), PERIOD, history, NOW)  # the invoice was paid: 45
    assert kinds(paid) == [("restored", "1")]
    later = spend_events("c1", LIMIT, D(0), D(60), datetime(2026, 4, 1, tzinfo=UTC), remember(history, paid), NOW)
    assert kinds(later) == [("threshold_crossed", "0.5")]  # a new period: its own crossings


def test_ids_are_deterministic_and_the_data_says_why():
    (event,) = spend_events("c1", LIMIT, D(30), D(25), PERIOD, SpendHistory(), NOW)
    (same,) = spend_events("c1", LIMIT, D(30), D(25), PERIOD, SpendHistory(), NOW)
    assert event.event_id == same.event_id
    assert event.data | {"at": None} == {
        "customer_id": "c1", "currency": "USD", "limit": "100.00", "exposure": "55.00", "unpaid": "30.00",
        "running_charge": "25.00", "period_start": PERIOD.isoformat(), "share": "0.5", "at": None,
    }  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(0, 2)), max_size=12))
def test_any_sequence_alternates_reached_and_restored_and_never_repeats_an_event(steps):
    history, seen = SpendHistory(), set()
    for unpaid, running, month in steps:
        period = datetime(2026, 3 + month, 1, tzinfo=UTC)
        events = spend_events("c1", LIMIT, D(unpaid), D(running), period, history, NOW)
        for event in events:
            assert event.event_id not in seen
            seen.add(event.event_id)
        remember(history, events)
        assert history.reached == (unpaid + running >= 100)


@pytest.mark.parametrize(
    "bad",
    [
        {"currency": "USD", "amount": "0"},
        {"currency": "USD", "amount": "1.001"},
        {"currency": "XXX", "amount": "1"},
        {"currency": "USD", "amount": "1", "alert_at": ["1"]},
        {"currency": "USD", "amount": "1", "alert_at": ["0.5", "0.5"]},
    ],
)
def test_a_limit_that_cannot_be_kept_is_refused(bad):
    with pytest.raises(ValidationError):
        CreditLimit.model_validate(bad)


def test_a_reached_limit_denies_metered_features_only():
    limited = replace(state(api_calls=3), credit_limited=True)
    assert check(limited, "api_calls", ENTITLEMENT_NOW).reason == "credit_limit_reached"
    assert check(limited, "sso", ENTITLEMENT_NOW).has_access  # a boolean feature stays


class FakeSpend:
    def __init__(self, unpaid: dict[str, dict[str, Decimal]]):
        self.rows: dict[str, tuple[SpendEvent, int]] = {}
        self.owed = unpaid

    def history(self) -> dict[tuple[str, str], SpendHistory]:
        out: dict[tuple[str, str], SpendHistory] = {}
        for event, _ in self.rows.values():
            remember(out.setdefault((event.customer_id, event.currency), SpendHistory()), [event])
        return out

    def unpaid(self, customers: set[str]) -> dict[str, dict[str, Decimal]]:
        return {c: v for c, v in self.owed.items() if c in customers}

    def store(self, events: list[SpendEvent], published: int = 0) -> None:
        for event in events:
            self.rows[event.event_id] = (event, published)

    def unpublished(self) -> list[SpendEvent]:
        return [event for event, published in self.rows.values() if not published]


def test_the_monitor_prices_the_open_period_and_announces_once():
    store, publish = one_customer(tokens=0), FakePublisher()  # pro: 20.00 a month, nothing used
    store.terms["cust-1"] = CustomerTerms(credit_limit=CreditLimit(currency="USD", amount=D("25"), alert_at=[D("0.5")]))
    spend = FakeSpend({"cust-1": {"USD": D("10.00")}})  # an unpaid invoice
    monitor = SpendMonitor(store, spend, rater(store, publish), publish)
    decided = asyncio.run(monitor.run_once(AFTER_JAN))
    assert kinds(decided) == [("threshold_crossed", "0.5"), ("reached", "1")]  # 10 + 20 = 30 >= 25
    assert decided[1].data["running_charge"] == "20.00"
    assert [e["type"] for e in publish.events("credits")] == [
        "bastionary.credit_limit.threshold_crossed.v1",
        "bastionary.credit_limit.reached.v1",
    ]
    assert asyncio.run(monitor.run_once(AFTER_JAN)) == []  # announced: nothing again
    spend.owed = {}  # paid
    assert kinds(asyncio.run(monitor.run_once(AFTER_JAN))) == [("restored", "1")]
    assert all(published for _, published in spend.rows.values())


def test_a_customer_without_a_limit_costs_nothing():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    assert asyncio.run(SpendMonitor(store, FakeSpend({}), rater(store, publish), publish).run_once(AFTER_JAN)) == []


def test_a_plan_s_credit_limit_applies_to_its_customers_without_their_own():
    limited = Plan.model_validate(
        PRO.model_dump() | {"key": "limited", "credit_limit": {"amount": "15", "alert_at": ["0.5"]}}
    )
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="limited")
    store.subscribe("sub-2", "cust-2", plan="limited")
    store.terms["cust-2"] = CustomerTerms(credit_limit=CreditLimit(currency="USD", amount=D("1000")))  # its own wins
    rate = Rater(store, [PRO, limited], [TOKENS], GRACE, publish)
    decided = asyncio.run(SpendMonitor(store, FakeSpend({}), rate, publish).run_once(AFTER_JAN))
    assert [(e.customer_id, e.kind) for e in decided] == [("cust-1", "threshold_crossed"), ("cust-1", "reached")]
    assert decided[1].data["limit"] == "15.00"  # the 20.00 seat fee of February's open period
    subs = store.subscriptions({p.key: p for p in (PRO, limited)})
    assert plan_limits(subs, AFTER_JAN)["cust-1"].amount == D(15)
    assert plan_limits(subs, datetime(2023, 12, 31, tzinfo=UTC)) == {}  # before the subscriptions start


def test_a_run_for_flushed_customers_prices_only_limited_ones_and_reads_nothing_for_others():
    store, publish = one_customer(tokens=0), FakePublisher()
    store.subscribe("sub-2", "cust-2")
    store.terms["cust-1"] = CustomerTerms(credit_limit=CreditLimit(currency="USD", amount=D("15")))
    spend = FakeSpend({})
    monitor = SpendMonitor(store, spend, rater(store, publish), publish)
    assert asyncio.run(monitor.run_once(AFTER_JAN, customers={"cust-1"})) == []  # no full run yet: none known
    assert kinds(asyncio.run(monitor.run_once(AFTER_JAN))) == [("reached", "1")]
    spend.rows.clear()  # as if nothing had been announced
    assert asyncio.run(monitor.run_once(AFTER_JAN, customers={"cust-2"})) == []  # no limit: nothing priced
    assert kinds(asyncio.run(monitor.run_once(AFTER_JAN, customers={"cust-1", "cust-2"}))) == [("reached", "1")]


def test_a_customer_whose_exposure_cannot_be_priced_leaves_the_others_decided():
    huge = Plan.model_validate(
        PRO.model_dump()
        | {
            "key": "huge",
            "prices": [{"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "1000"}],
        }
    )
    store, publish = one_customer(tokens=0), FakePublisher()
    store.subscribe("sub-2", "cust-2", plan="huge")
    store.use("cust-2", UNPRICEABLE, datetime(2024, 2, 3, tzinfo=UTC))  # type: ignore[arg-type]
    for customer in ("cust-1", "cust-2"):
        store.terms[customer] = CustomerTerms(credit_limit=CreditLimit(currency="USD", amount=D("25")))
    spend = FakeSpend({"cust-1": {"USD": D("10.00")}})
    monitor = SpendMonitor(store, spend, Rater(store, [PRO, huge], [TOKENS], GRACE, publish), publish)
    with capture_logs() as logs:
        decided = asyncio.run(monitor.run_once(datetime(2024, 2, 10, tzinfo=UTC)))
    assert [(e.customer_id, e.kind) for e in decided] == [("cust-1", "reached")]  # 10 + 20 >= 25
    ((failure,),) = [[e for e in logs if e["log_level"] == "error"]]
    assert failure["customer_id"] == "cust-2"
