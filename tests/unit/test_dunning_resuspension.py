"""A suspension lifted by payment (in full, or down below min_amount_due) is applied again when
the case owes again (a chargeback, a refund): each step fires once per invoice, but the case is
past its suspend step on the policy's clock, and before it kept full access until written off.
The suspension applied again is a suspend notice of its own id, so every reader of the trail
(the store's loader, entitlements) counts it as the first, and a payment lifts it again."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.dunning.dunner import STEP_TYPE, Dunner
from bastionary.dunning.engine import (
    Case,
    Pause,
    Record,
    advance,
    derived_id,
    notice_id,
    resuspension_id,
)
from bastionary.dunning.policy import DunningConfig, Policy
from bastionary.storage.dunning import ClickHouseDunningStore
from tests.unit.schema_helpers import NOTICE_VALIDATOR, schema_errors, wire

from .test_dunning_engine import POLICY, apply, case, day, run
from .test_dunning_schedule import _TrailClient

SUSPEND = 4  # POLICY's suspend step (P21D); step 5 marks uncollectible at P30D


def kinds(records: list[Record]) -> list[tuple[str, str, str]]:
    return [(r.kind, r.action, r.detail) for r in records]


def entitlements_suspended(trail: list[Record]) -> bool:
    """storage/entitlements.py's rule over an invoice's rows: suspend notices outnumber
    reinstatements (``suspended``), or the last of them is a suspend notice (the transitions)."""
    rows = {r.event_id: r for r in trail}.values()  # FINAL: one row per event_id
    suspends = sum(r.kind == "notice" and r.action == "suspend" for r in rows)
    by_count = suspends > sum(r.kind == "reinstated" for r in rows)
    walked = False
    for r in trail:
        if r.kind == "notice" and r.action == "suspend":
            walked = True
        elif r.kind == "reinstated":
            walked = False
    assert walked == by_count, "the two entitlements readers disagree"
    return by_count


def suspended_then_paid(paid_on: float = 25) -> tuple[Case, list[Record]]:
    c, trail = case(), []
    trail += run(c, day(21.5))  # step 4: suspend (1-3 skipped, as after downtime)
    assert c.suspended
    c.paid = Decimal(100)
    trail += run(c, day(paid_on))
    assert kinds(trail[-2:]) == [("state", "", "paid"), ("reinstated", "", "paid")]
    assert not c.suspended and c.reinstatements == 1
    return c, trail


def test_a_chargeback_after_payment_in_full_suspends_again_at_once():
    """Suspended on day 21, paid on day 25, charged back on day 40: suspended again on day 40
    (before: full access until mark_uncollectible)."""
    c, trail = suspended_then_paid()
    c.paid = Decimal(0)
    records = run(c, day(40))
    trail += records
    assert kinds(records) == [("state", "", "overdue"), ("notice", "suspend", "resuspended")]
    again = records[1]
    assert again.step == SUSPEND
    assert again.event_id == resuspension_id("inv-1", 1) == derived_id("inv-1", "resuspended", 1)
    assert again.event_id != notice_id("inv-1", SUSPEND)
    assert c.suspended and entitlements_suspended(trail)
    # Nothing more until the schedule reaches mark_uncollectible: 25 days counted before the
    # payment, the 15 settled do not count, so P30D is reached on day 45.
    assert run(c, day(44.9)) == []
    assert [(r.kind, r.action) for r in run(c, day(45))] == [("notice", "mark_uncollectible"), ("state", "")]


def test_the_suspension_applied_again_is_published_like_the_step_s_notice():
    c, _ = suspended_then_paid()
    original = next(r for r in advance(case(), POLICY, day(21.5)) if r.action == "suspend")
    c.paid = Decimal(0)
    again = next(r for r in advance(c, POLICY, day(40)) if r.action == "suspend")
    assert again.publish and again.data is not None and original.data is not None
    assert set(again.data) == set(original.data)  # the notice's data shape
    assert again.data["notice_id"] == again.event_id
    assert {k: v for k, v in again.data.items() if k not in ("notice_id", "decided_at", "days_overdue")} == {
        k: v for k, v in original.data.items() if k not in ("notice_id", "decided_at", "days_overdue")
    }
    assert (again.data["days_overdue"], again.data["amount_due"]) == (40, "100.00")
    assert schema_errors(NOTICE_VALIDATOR, wire(again.data)) == []


def test_paid_again_reinstates_again_and_a_second_chargeback_suspends_with_a_new_id():
    c, trail = suspended_then_paid()
    c.paid = Decimal(0)
    trail += run(c, day(40))
    c.paid = Decimal(100)
    records = run(c, day(41))
    trail += records
    assert kinds(records) == [("state", "", "paid"), ("reinstated", "", "paid")]
    assert records[1].event_id == derived_id("inv-1", "reinstated", 2) == records[1].data["reinstatement_id"]
    assert not c.suspended and c.reinstatements == 2 and not entitlements_suspended(trail)
    c.paid = Decimal(0)
    records = run(c, day(60))
    trail += records
    assert kinds(records) == [("state", "", "overdue"), ("notice", "suspend", "resuspended")]
    assert records[1].event_id == resuspension_id("inv-1", 2) != resuspension_id("inv-1", 1)
    assert c.suspended and entitlements_suspended(trail)
    assert len({r.event_id for r in trail}) == len(trail)  # every row its own id


def test_deciding_a_reopened_case_twice_gives_the_same_rows():
    c, _ = suspended_then_paid()
    c.paid = Decimal(0)
    first, second = advance(c, POLICY, day(40)), advance(c, POLICY, day(40.5))
    assert [(r.event_id, r.kind, r.step, r.action, r.detail) for r in first] == [
        (r.event_id, r.kind, r.step, r.action, r.detail) for r in second
    ]
    again, _ = suspended_then_paid()  # the same history, loaded again
    again.paid = Decimal(0)
    assert [r.event_id for r in advance(again, POLICY, day(40))] == [r.event_id for r in first]


def test_a_refund_above_the_minimum_after_paying_below_it_suspends_again():
    c, trail = case(), []
    trail += run(c, day(22))
    c.paid = Decimal("99.50")  # 0.50 left, below min_amount_due 1.00
    records = run(c, day(23))
    trail += records
    assert kinds(records) == [("reinstated", "", "below_minimum"), ("minimum", "", "below")]
    assert not entitlements_suspended(trail)
    c.paid = Decimal(50)  # a refund of 49.50: 50.00 owed again
    records = run(c, day(26))
    trail += records
    assert kinds(records) == [("minimum", "", "above"), ("notice", "suspend", "resuspended")]
    assert records[1].event_id == resuspension_id("inv-1", 1)
    assert records[1].data is not None and records[1].data["amount_due"] == "50.00"
    assert c.suspended and entitlements_suspended(trail)
    c.paid = Decimal("99.50")  # paid down below the minimum again: lifted again, n=2
    records = run(c, day(27))
    assert [(r.kind, r.event_id) for r in records] == [
        ("reinstated", derived_id("inv-1", "reinstated", 2)),
        ("minimum", derived_id("inv-1", "minimum", 3)),
    ]
    assert not c.suspended


def test_other_steps_still_fire_once():
    """Reminders and the final notice are not sent again to a reopened case."""
    c = case()
    sent: list[tuple[int, str]] = []
    for n in range(1, 23):
        sent += [(r.step, r.action) for r in run(c, day(n)) if r.kind == "notice"]
    c.paid = Decimal(100)
    run(c, day(23))
    c.paid = Decimal(0)
    for n in range(40, 48):
        sent += [(r.step, r.action) for r in run(c, day(n)) if r.kind == "notice"]
        assert n == 47 or c.state == "overdue"
    assert sent == [
        (1, "remind"),
        (2, "remind"),
        (3, "final_notice"),
        (4, "suspend"),
        (4, "suspend"),  # applied again on day 40
        (5, "mark_uncollectible"),  # day 47: 23 days counted before the payment, 7 after
    ]


def test_no_suspension_again_before_the_suspend_step_or_while_it_does_not_apply():
    # Reopened before ever being suspended: the schedule resumes, nothing is applied again.
    c = case()
    run(c, day(8))
    c.paid = Decimal(100)
    run(c, day(9))
    c.paid = Decimal(0)
    assert [r.kind for r in run(c, day(30))] == ["state"]
    # Reopened while paused: applied again only when the pause ends.
    c, _ = suspended_then_paid()
    c.pauses.append(Pause(day(30), day(45), "promised"))
    c.paid = Decimal(0)
    assert kinds(run(c, day(40))) == [("state", "", "overdue")]
    assert kinds(run(c, day(45))) == [("notice", "suspend", "resuspended")]
    # Reopened below the minimum: nothing to dun, nothing applied again.
    c, _ = suspended_then_paid()
    c.paid = Decimal("99.50")
    assert kinds(run(c, day(40))) == [("state", "", "overdue"), ("minimum", "", "below")]
    assert run(c, day(41)) == []
    # No policy: nothing to apply.
    c, _ = suspended_then_paid()
    c.paid = Decimal(0)
    assert kinds(advance(c, None, day(40))) == [("state", "", "overdue")]


def test_the_latest_applied_suspend_step_is_the_one_applied_again():
    policy = Policy.model_validate(
        {
            "key": "two",
            "steps": [
                {"after": "P5D", "action": "suspend", "channels": ["email"], "template": "suspend"},
                {"after": "P10D", "action": "remind"},
                {"after": "P20D", "action": "suspend", "channels": ["webhook"]},
            ],
        }
    )
    c = Case(case().invoice, steps_done={1, 2}, reinstatements=1, state="overdue", state_changes=1)
    (record,) = advance(c, policy, day(12))  # reopened after step 2: step 1 applied again
    assert (record.step, record.data["channels"] if record.data else None) == (1, ["email"])
    c = Case(case().invoice, steps_done={1, 2, 3}, reinstatements=1, state="overdue", state_changes=1)
    (record,) = advance(c, policy, day(25))
    assert (record.step, record.data["channels"] if record.data else None) == (3, ["webhook"])


def test_the_store_counts_a_suspension_applied_again_as_entitlements_do():
    """Suspended, reinstated, suspended again: suspended, whatever the order of ``at`` (a clock
    set back puts the suspension applied again before the reinstatement)."""
    for again_at in (day(40), day(24)):
        rows = [
            ("inv-1", "notice", SUSPEND, "suspend", "", day(21), None),
            ("inv-1", "reinstated", 0, "", "paid", day(25), None),
            ("inv-1", "notice", SUSPEND, "suspend", "resuspended", again_at, None),
        ]
        rows.sort(key=lambda row: row[5])
        c = case()
        ClickHouseDunningStore(_TrailClient(rows))._load_trail({"inv-1": c})  # type: ignore[arg-type]
        assert (c.suspended, c.reinstatements, c.steps_done) == (True, 1, {SUSPEND}), again_at
    rows = [
        ("inv-1", "notice", SUSPEND, "suspend", "", day(21), None),
        ("inv-1", "reinstated", 0, "", "paid", day(25), None),
        ("inv-1", "notice", SUSPEND, "suspend", "resuspended", day(40), None),
        ("inv-1", "reinstated", 0, "", "paid", day(41), None),
    ]
    c = case()
    ClickHouseDunningStore(_TrailClient(rows))._load_trail({"inv-1": c})  # type: ignore[arg-type]
    assert (c.suspended, c.reinstatements) == (False, 2)


async def test_the_dunner_publishes_and_marks_the_suspension_applied_again():
    c, _ = suspended_then_paid()
    c.paid = Decimal(0)

    class Store:
        def __init__(self) -> None:
            self.decided: list[tuple[Case, Record]] = []
            self.marked: list[tuple[str, dict[str, Any]]] = []

        def unpublished(self) -> list:
            return []

        def cases(self, customers: set[str] | None = None) -> list:
            return [c]

        def store_decisions(self, decided: list, at: datetime, published: int = 0) -> None:
            self.decided.extend(decided)

        def mark_published(self, published: list) -> None:
            self.marked.extend(published)

    class Clock:
        def now(self) -> datetime:
            return day(40)

    sent: list[dict[str, Any]] = []

    async def publish(_: str, value: bytes) -> Any:
        sent.append(orjson.loads(value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    store = Store()
    await Dunner(store, DunningConfig(policies=[POLICY]), publish, Clock()).run_once()  # type: ignore[arg-type]
    (event,) = sent
    assert (event["type"], event["id"]) == (STEP_TYPE, resuspension_id("inv-1", 1))
    assert event["data"]["action"] == "suspend" and event["data"]["notice_id"] == event["id"]
    assert [data["notice_id"] for _, data in store.marked] == [event["id"]]


@settings(max_examples=300, deadline=None)
@given(moves=st.lists(st.tuples(st.integers(0, 24 * 8), st.integers(-100_00, 100_00)), min_size=1, max_size=20))
def test_a_case_owing_past_its_suspend_step_is_suspended_as_entitlements_read_it(moves):
    """Payments (positive cents) and refunds (negative) at any time: after every run, the
    trail's suspension (as entitlements read it) is the case's, and a case past its applied
    suspend step that owes at least the minimum, not settled, not written off, is suspended."""
    c, hour, trail = case(), 0, []
    for gap, cents in moves:
        hour += gap
        c.paid = max(min(c.paid + Decimal(cents) / 100, Decimal(100)), Decimal(0))
        trail += run(c, day(0) + timedelta(hours=hour))
        assert entitlements_suspended(trail) == c.suspended, hour
        if c.amount_due >= POLICY.min_amount_due and c.state not in ("paid", "uncollectible"):
            assert c.suspended == (SUSPEND in c.steps_done), (hour, c.amount_due)
        if c.amount_due < POLICY.min_amount_due:
            assert not c.suspended


TWO_SUSPENDS = Policy.model_validate(
    {
        "key": "twice",
        "steps": [
            {"after": "P7D", "action": "suspend"},
            {"after": "P14D", "action": "suspend"},
            {"after": "P30D", "action": "mark_uncollectible"},
        ],
    }
)


def test_a_second_suspend_step_while_suspended_is_passed_over_so_one_payment_lifts_it():
    """Two suspend notices needed two reinstatements: paid in full, the customer stayed
    suspended for entitlements (suspend notices outnumbered reinstatements) until a later run
    reinstated it again. Run by run, and with both due at once after downtime."""
    for runs in ([8, 15], [15]):
        c, trail = case(), []
        for n in runs:
            records = advance(c, TWO_SUSPENDS, day(n))
            apply(c, records, day(n))
            trail += records
        assert [(r.kind, r.step, r.detail) for r in trail if r.step in (1, 2)][-1] == (
            "skipped",
            2,
            "already suspended",
        )
        assert entitlements_suspended(trail)
        c.paid = Decimal(100)
        records = advance(c, TWO_SUSPENDS, day(16))
        apply(c, records, day(16))
        trail += records
        assert not entitlements_suspended(trail), runs


def test_a_chargeback_after_a_written_off_invoice_was_paid_is_written_off_again_and_suspended():
    """Written off on day 31 (suspended since day 21), paid on day 35, charged back on day 50:
    the write-off stands (mark_uncollectible fires once per invoice, and the case is past it),
    and the suspension comes back as after any chargeback. Before, the case came back
    ``overdue`` with every step done, so it stood overdue for ever, never written off again."""
    c, trail = case(), []
    trail += run(c, day(21.5))
    trail += run(c, day(31))
    assert c.state == "uncollectible" and c.suspended
    c.paid = Decimal(100)
    trail += run(c, day(35))
    assert (c.state, c.suspended) == ("paid", False)
    c.paid = Decimal(0)
    records = run(c, day(50))
    trail += records
    assert kinds(records) == [("state", "", "uncollectible"), ("notice", "suspend", "resuspended")]
    assert c.suspended and entitlements_suspended(trail)
    assert run(c, day(80)) == []  # nothing more: every step is behind it
