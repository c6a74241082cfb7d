"""A subscription belongs to the customer of its created event, and a grant id to the customer
of its first grant. An event naming another customer is refused at intake (``customer_mismatch``
on billing.dlq, 400 over HTTP), and one stored before that rule is ignored by the rater. Before,
a key scoped to one customer could change, cancel or void another customer's subscription or
grant by naming itself in the body: the rater took the customer from the created event and
applied the change anyway, while a run for that customer alone did not see it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import orjson
import pytest
from structlog.testing import capture_logs

from bastionary.rating.events import (
    CreditGrantData,
    InvalidBillingEvent,
    SubscriptionData,
    check_grant_owner,
    check_owner,
)
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.rating.subscriptions import SubscriptionEvent, build_subscription, subscription_owner
from bastionary.worker.services.billing import BillingService
from tests.unit.test_intake_guard import App, DeadLetters, Message, Stream
from tests.unit.test_plan_changes import PLANS
from tests.unit.test_rater import FEB, JAN, at

CREATED_RECEIVED = at(2024, 1, 2)


def event(
    kind: str, customer: str, when: datetime, plan: str = "usd", received: datetime | None = None
) -> SubscriptionEvent:
    start = when if kind == "created" else None
    received = CREATED_RECEIVED if kind == "created" else received
    return SubscriptionEvent("sub-1", customer, kind, "" if kind == "canceled" else plan, start, None, when, received)


# --- the rater: events the intake could not check, and events stored before the rule ------


def test_an_event_of_another_customer_that_came_before_the_created_one_is_ignored_with_a_warning():
    early = at(2024, 1, 1, 12)  # received before the created event: the intake had nothing to check
    stored = [
        event("created", "cust-a", JAN),
        event("changed", "cust-b", at(2024, 1, 10), "usd-too", early),
        event("canceled", "cust-b", at(2024, 1, 20), received=early),
    ]
    with capture_logs() as logs:
        sub = build_subscription("sub-1", stored, PLANS)
    assert sub is not None and sub.customer_id == "cust-a"
    assert [(s.plan.key, s.end) for s in sub.segments] == [("usd", None)] and sub.canceled_at is None
    warned = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["kind"], w["customer_id"]) for w in warned] == [("changed", "cust-b"), ("canceled", "cust-b")]


@pytest.mark.parametrize("received", [None, at(2024, 1, 3)], ids=["before-received-at", "after-the-created"])
def test_one_stored_before_the_rule_is_applied_as_it_was_billed(received):
    stored = [event("created", "cust-a", JAN), event("canceled", "cust-b", at(2024, 1, 20), received=received)]
    sub = build_subscription("sub-1", stored, PLANS)
    assert sub is not None and sub.canceled_at == at(2024, 1, 20)


# --- the rules the intake and the API apply -------------------------------------------------


def test_the_owner_is_the_created_event_s_customer_and_none_before_it():
    assert subscription_owner([]) is None
    assert subscription_owner([event("changed", "cust-b", FEB)]) is None
    assert subscription_owner([event("changed", "cust-b", JAN), event("created", "cust-a", FEB)]) == "cust-a"


@pytest.mark.parametrize("kind", ["created", "changed", "canceled"])
def test_an_event_naming_another_customer_than_the_owner_is_refused_without_naming_the_owner(kind):
    data = SubscriptionData(subscription_id="sub-1", customer_id="cust-b", plan="usd", start=FEB, effective_at=FEB)
    with pytest.raises(InvalidBillingEvent) as refused:
        check_owner(data, [event("created", "cust-a", JAN)])
    assert refused.value.code == "customer_mismatch"
    assert "cust-a" not in str(refused.value) and "usd" not in str(refused.value)
    check_owner(data.model_copy(update={"customer_id": "cust-a"}), [event("created", "cust-a", JAN)])
    check_owner(data, [])  # nothing stored: taken, and judged by the rater once the created comes


def test_a_grant_id_held_by_another_customer_is_refused():
    data = CreditGrantData(grant_id="g-1", customer_id="cust-b")
    with pytest.raises(InvalidBillingEvent) as refused:
        check_grant_owner(data, "cust-a")
    assert refused.value.code == "customer_mismatch" and "cust-a" not in str(refused.value)
    check_grant_owner(data, "cust-b")
    check_grant_owner(data, None)


# --- the worker's intake ----------------------------------------------------------------


class OwnedStore:
    """What the billing service's subscription and credit intakes use of ClickHouseBillingStore."""

    def __init__(self) -> None:
        self.subscriptions: list[SubscriptionRow] = []
        self.ledger: list[LedgerRow] = []

    def insert_subscription_events(self, rows: list[SubscriptionRow]) -> None:
        self.subscriptions.extend(rows)

    def subscription_events(self, subscription_id: str) -> list[SubscriptionEvent]:
        mine = sorted(
            (r for r in self.subscriptions if r.subscription_id == subscription_id), key=lambda r: r.effective_at
        )
        return [
            SubscriptionEvent(r.subscription_id, r.customer_id, r.event_type, r.plan, r.start, None, r.effective_at)
            for r in mine
        ]

    def insert_ledger(self, rows: list[LedgerRow]) -> None:
        self.ledger.extend(rows)

    def grant_owner(self, grant_id: str) -> str | None:
        opening = (r for r in self.ledger if r.grant_id == grant_id and r.kind in ("granted", "purchased"))
        return next((r.customer_id for r in opening), None)


def record(offset: int, event_type: str, data: dict[str, object], when: datetime) -> Message:
    cloud = {"specversion": "1.0", "id": f"evt-{offset}", "source": "test", "type": event_type}
    return Message(offset, orjson.dumps(cloud | {"time": when.isoformat(), "data": data}))


def service(store: OwnedStore, dead_letters: DeadLetters, app: App) -> BillingService:
    ctx = SimpleNamespace(
        app=app,
        dead_letter=dead_letters,
        topics=SimpleNamespace(billing_dlq="t.billing.dlq"),
        latest_time=lambda m: None,
    )
    return BillingService(ctx, SimpleNamespace(plans=list(PLANS.values())), lambda: store)


def test_the_billing_service_dead_letters_subscription_events_of_another_customer():
    dead_letters, store, app = DeadLetters(), OwnedStore(), App()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    later = (start + timedelta(days=10)).isoformat()
    ids = {"subscription_id": "sub-1"}
    records = [
        record(0, "bastionary.subscription.created.v1", ids | {"customer_id": "a", "plan": "usd", "start": start.isoformat()}, start),
        record(1, "bastionary.subscription.changed.v1", ids | {"customer_id": "b", "plan": "usd-too", "effective_at": later}, start),
        record(2, "bastionary.subscription.canceled.v1", ids | {"customer_id": "b", "effective_at": later}, start),
        record(3, "bastionary.subscription.created.v1", ids | {"customer_id": "b", "plan": "usd", "start": start.isoformat()}, start),
        record(4, "bastionary.subscription.canceled.v1", ids | {"customer_id": "a", "effective_at": later}, start),
    ]  # fmt: skip
    stream = Stream(records)
    asyncio.run(service(store, dead_letters, app)._subscription_intake(stream))
    assert [(sent[1], sent[2]) for sent in dead_letters.sent] == [(n, "customer_mismatch") for n in (1, 2, 3)]
    assert [(row.event_type, row.customer_id) for row in store.subscriptions] == [("created", "a"), ("canceled", "a")]
    assert stream.acked == [0, 1, 2, 3, 4] and not app.crashes


def test_the_billing_service_dead_letters_a_grant_or_void_of_another_customer_s_grant_id():
    dead_letters, store, app = DeadLetters(), OwnedStore(), App()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    grant = {"grant_id": "g-1", "amount": "5.00", "currency": "USD", "effective_at": when.isoformat()}
    records = [
        record(0, "bastionary.credit.granted.v1", grant | {"customer_id": "a"}, when),
        record(1, "bastionary.credit.voided.v1", {"grant_id": "g-1", "customer_id": "b", "effective_at": when.isoformat()}, when),
        record(2, "bastionary.credit.granted.v1", grant | {"customer_id": "b"}, when),
        record(3, "bastionary.credit.voided.v1", {"grant_id": "g-1", "customer_id": "a", "effective_at": when.isoformat()}, when),
    ]  # fmt: skip
    stream = Stream(records)
    asyncio.run(service(store, dead_letters, app)._credit_intake(stream))
    assert [(sent[1], sent[2]) for sent in dead_letters.sent] == [(1, "customer_mismatch"), (2, "customer_mismatch")]
    assert [(row.kind, row.customer_id) for row in store.ledger] == [("granted", "a"), ("voided", "a")]
    assert stream.acked == [0, 1, 2, 3] and not app.crashes
