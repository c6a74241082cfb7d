"""The dunning decision, without broker or database."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from bastionary.dunning.engine import (
    Case,
    InvoiceFacts,
    Pause,
    advance,
    notice_id,
    overdue_for,
    state_of,
)
from bastionary.dunning.policy import DunningConfig, Policy

DUE = datetime(2026, 3, 1, tzinfo=UTC)
POLICY = Policy.model_validate(
    {
        "key": "standard",
        "min_amount_due": "1.00",
        "steps": [
            {"after": "P1D", "action": "remind", "channels": ["email", "webhook"], "template": "friendly"},
            {"after": "P7D", "action": "remind", "channels": ["email", "webhook"], "template": "firm"},
            {"after": "P14D", "action": "final_notice", "channels": ["email", "webhook"]},
            {"after": "P21D", "action": "suspend"},
            {"after": "P30D", "action": "mark_uncollectible"},
        ],
    }
)


def case(total="100.00", **kwargs) -> Case:
    invoice = InvoiceFacts(
        "inv-1",
        "cust-1",
        "pro",
        "USD",
        Decimal(total),
        DUE - timedelta(days=14),
        DUE,
        DUE - timedelta(days=44),
        DUE - timedelta(days=14),
    )
    return Case(invoice, **kwargs)


def apply(c: Case, records, at: datetime | None = None) -> Case:
    """What the store would load back after recording ``records`` (their clock ``at``, if given)."""
    for r in records:
        if r.kind in ("notice", "skipped"):
            c.steps_done.add(r.step)
            c.suspended = c.suspended or (r.kind == "notice" and r.action == "suspend")
        elif r.kind == "state":
            c.state, c.state_changes = r.detail, r.step
            if at is not None:
                c.state_history.append((at, r.detail))
        elif r.kind == "reinstated":
            c.suspended, c.reinstatements = False, c.reinstatements + 1
        elif r.kind == "minimum":
            c.below_minimum, c.minimum_changes = r.detail == "below", r.step
            if at is not None:
                c.minimum_history.append((at, r.detail))
    return c


def day(n: float) -> datetime:
    return DUE + timedelta(days=n)


def run(c: Case, now: datetime) -> list:
    """One run of the dunning timer: decide, and record as the store would load it back."""
    records = advance(c, POLICY, now)
    apply(c, records, now)
    return records


def test_walks_every_step_once_in_order():
    c = case()
    sent = []
    for n in range(40):
        records = advance(c, POLICY, day(n + 0.5))
        apply(c, records)
        sent += [(n, r.step, r.action) for r in records if r.kind == "notice"]
    assert sent == [
        (1, 1, "remind"),
        (7, 2, "remind"),
        (14, 3, "final_notice"),
        (21, 4, "suspend"),
        (30, 5, "mark_uncollectible"),
    ]
    assert c.state == "uncollectible"
    assert advance(c, POLICY, day(60)) == []


def test_notice_ids_are_deterministic_and_per_step():
    first = next(r for r in advance(case(), POLICY, day(1)) if r.kind == "notice")
    again = next(r for r in advance(case(), POLICY, day(1.9)) if r.kind == "notice")
    assert first.event_id == again.event_id == notice_id("inv-1", 1) == first.data["notice_id"]
    assert notice_id("inv-1", 2) != first.event_id and notice_id("inv-2", 1) != first.event_id


def test_notice_carries_the_contract_fields():
    data = next(r for r in advance(case(paid=Decimal(30)), POLICY, day(8)) if r.kind == "notice").data
    assert {
        k: data[k] for k in ("invoice_id", "customer_id", "step", "action", "days_overdue", "amount_due", "currency")
    } == {
        "invoice_id": "inv-1",
        "customer_id": "cust-1",
        "step": 2,
        "action": "remind",
        "days_overdue": 8,
        "amount_due": "70.00",
        "currency": "USD",
    }


def test_amounts_are_shown_in_the_currency_minor_unit():
    c = case(total="100.000000000", paid=Decimal("30.500000000"))  # as ClickHouse Decimal(38, 9) returns them
    data = next(r for r in advance(c, POLICY, day(1)) if r.kind == "notice").data
    assert (data["amount_due"], data["invoice_total"]) == ("69.50", "100.00")


def test_after_downtime_only_the_latest_notice_goes_out_and_the_rest_are_skipped():
    records = advance(case(), POLICY, day(15))
    notices = [(r.step, r.action) for r in records if r.kind == "notice"]
    skipped = [(r.step, r.detail) for r in records if r.kind == "skipped"]
    assert notices == [(3, "final_notice")]
    assert skipped == [(1, "superseded by step 3"), (2, "superseded by step 3")]


def test_state_steps_are_not_skipped_by_downtime():
    records = advance(case(), POLICY, day(31))
    assert [(r.step, r.action) for r in records if r.kind == "notice"] == [(4, "suspend"), (5, "mark_uncollectible")]
    assert [r.detail for r in records if r.kind == "state"] == ["overdue", "uncollectible"]


def test_payment_in_full_stops_the_policy_and_lifts_a_suspension():
    c = apply(case(), advance(case(), POLICY, day(22)))
    assert c.suspended
    c.paid = Decimal("100.00")
    records = advance(c, POLICY, day(23))
    assert [r.kind for r in records] == ["state", "reinstated"]
    assert records[0].detail == "paid" and records[1].data["reason"] == "paid"
    apply(c, records)
    assert advance(c, POLICY, day(40)) == []


def test_partial_payment_keeps_dunning_for_the_rest():
    c = case(paid=Decimal(40))
    assert state_of(c, day(-1)) == "partially_paid"
    notice = next(r for r in advance(c, POLICY, day(1)) if r.kind == "notice")
    assert notice.data["amount_due"] == "60.00"


def test_below_min_amount_due_and_zero_invoices_are_not_dunned():
    assert [(r.kind, r.detail) for r in advance(case(paid=Decimal("99.50")), POLICY, day(2))] == [
        ("state", "overdue"),
        ("minimum", "below"),  # the policy's clock stands still from here
    ]
    assert [(r.kind, r.detail) for r in advance(case(total="0"), POLICY, day(2))] == [("state", "paid")]


def test_a_promise_pauses_the_policy_and_the_schedule_resumes_where_it_stood():
    c = apply(case(), advance(case(), POLICY, day(2)))  # step 1 sent
    c.pauses.append(Pause(day(3), day(13), "promised"))
    assert [r for r in advance(c, POLICY, day(10)) if r.kind == "notice"] == []
    assert overdue_for(c, day(17)) == timedelta(days=7)  # 17 days minus the 10 paused
    assert [r.step for r in advance(c, POLICY, day(16)) if r.kind == "notice"] == []
    assert [r.step for r in advance(c, POLICY, day(17)) if r.kind == "notice"] == [2]


def test_an_open_dispute_pauses_until_resolved():
    c = case(pauses=[Pause(day(0.5), None, "disputed")])
    assert [r for r in advance(c, POLICY, day(40)) if r.kind == "notice"] == []


def test_void_stops_everything():
    c = apply(case(), advance(case(), POLICY, day(22)))
    c.voided = True
    records = advance(c, POLICY, day(25))
    assert [(r.kind, r.detail) for r in records] == [("state", "void"), ("reinstated", "void")]


def test_refund_reopens_with_new_state_rows():
    c = apply(case(), advance(case(), POLICY, day(2)))
    c.paid = Decimal(100)
    c = apply(c, advance(c, POLICY, day(3)))
    c.paid = Decimal(0)
    reopened = advance(c, POLICY, day(4))
    assert [(r.kind, r.detail) for r in reopened] == [("state", "overdue")]
    assert len({r.event_id for r in reopened} | {notice_id("inv-1", 1)}) == 2


def test_a_chargeback_long_after_payment_resumes_the_schedule_where_it_stood():
    """Paid two days after due, charged back on day 90: the 88 days it stood paid do not count,
    so the reopened case is 2 days overdue, not 90 (which skipped the reminders and applied
    suspend and mark_uncollectible at once)."""
    c = case()
    run(c, day(1.5))  # step 1
    c.paid = Decimal(100)
    run(c, day(2))
    c.paid = Decimal(0)
    assert overdue_for(c, day(90)) == timedelta(days=2)
    assert [(r.kind, r.detail) for r in run(c, day(90))] == [("state", "overdue")]
    sent = []
    for n in range(180, 260):
        sent += [(n / 2, r.step) for r in run(c, day(n / 2)) if r.kind in ("notice", "skipped")]
    assert sent == [(95, 2), (102, 3), (109, 4), (118, 5)]


def test_paid_before_due_and_refunded_after_counts_from_the_refund():
    c = case()
    run(c, day(-5))  # open
    c.paid = Decimal(100)
    run(c, day(-4))
    c.paid = Decimal(0)
    assert [(r.kind, r.detail) for r in run(c, day(10))] == [("state", "overdue")]
    assert [r.step for r in run(c, day(10.9)) if r.kind == "notice"] == []
    assert [r.step for r in run(c, day(11)) if r.kind == "notice"] == [1]


def test_time_settled_during_a_pause_is_not_taken_off_twice():
    c = case(pauses=[Pause(day(1), day(20), "promised")])
    c.state_history = [(day(0), "overdue"), (day(5), "paid"), (day(10), "overdue")]
    assert overdue_for(c, day(30)) == timedelta(days=11)  # 30 days minus the promise's 19


def test_paying_down_below_the_minimum_lifts_a_suspension_and_leaves_the_rest_owed():
    c = case()
    run(c, day(22))
    assert c.suspended
    c.paid = Decimal("99.50")  # 0.50 left, below min_amount_due 1.00: never dunned
    records = run(c, day(23))
    assert [(r.kind, r.detail) for r in records] == [("reinstated", "below_minimum"), ("minimum", "below")]
    assert records[0].data["reason"] == "below_minimum"
    assert not c.suspended and c.state == "overdue" and c.amount_due == Decimal("0.50")
    assert run(c, day(60)) == []  # no further steps, no second reinstatement
    c.paid = Decimal(100)
    assert [(r.kind, r.detail) for r in run(c, day(61))] == [("state", "paid")]


def test_policy_validation():
    with pytest.raises(ValidationError, match="strictly increasing"):
        Policy.model_validate(
            {"key": "p", "steps": [{"after": "P2D", "action": "remind"}, {"after": "P1D", "action": "remind"}]}
        )
    with pytest.raises(ValidationError, match="last step"):
        Policy.model_validate(
            {
                "key": "p",
                "steps": [{"after": "P2D", "action": "mark_uncollectible"}, {"after": "P3D", "action": "remind"}],
            }
        )
    with pytest.raises(ValidationError, match="unknown channels"):
        Policy.model_validate({"key": "p", "steps": [{"after": "P2D", "action": "remind", "channels": ["sms"]}]})
    config = DunningConfig.model_validate(
        {
            "policies": [
                {"key": "standard", "applies_to": {"plans": ["pro"]}, "steps": [{"after": "P1D", "action": "remind"}]},
                {"key": "fallback", "steps": [{"after": "P1D", "action": "remind"}]},
            ]
        }
    )
    assert config.policy_for("pro").key == "standard" and config.policy_for("starter").key == "fallback"
    with pytest.raises(ValidationError, match="more than one default"):
        DunningConfig.model_validate(
            {
                "policies": [
                    {"key": "a", "steps": [{"after": "P1D", "action": "remind"}]},
                    {"key": "b", "steps": [{"after": "P1D", "action": "remind"}]},
                ]
            }
        )
