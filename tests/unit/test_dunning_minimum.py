"""Time an invoice owed less than the policy's min_amount_due does not count toward its steps:
such an amount is never dunned, so the policy's clock stands still, as while the invoice stood
settled. Before, a payment down below the minimum on day 2 and a refund on day 60 made every
step due at once: suspend and mark_uncollectible fired the day the refund was seen. The case
records going below the minimum and back above it (``minimum`` rows, on the dunning clock)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.dunning.engine import Case, Pause, Record, advance, derived_id, overdue_for
from bastionary.storage.dunning import ClickHouseDunningStore

from .test_dunning_engine import DUE, POLICY, case, day, run
from .test_dunning_schedule import _TrailClient

HOUR = timedelta(hours=1)
START = -48  # hours from due_at


def kinds(records: list[Record]) -> list[tuple[str, str, str]]:
    return [(r.kind, r.action, r.detail) for r in records]


def test_a_refund_long_after_paying_down_below_the_minimum_resumes_where_it_stood():
    """The review's example: step 1 on day 1.5, paid down to 0.50 on day 2, a 49.50 refund on
    day 60: 2 days counted, not 60, so the next step is step 2 on day 65."""
    c = case()
    assert [r.step for r in run(c, day(1.5)) if r.kind == "notice"] == [1]
    c.paid = Decimal("99.50")
    records = run(c, day(2))
    assert kinds(records) == [("minimum", "", "below")]
    assert records[0].event_id == derived_id("inv-1", "minimum", 1)
    assert run(c, day(30)) == []
    c.paid = Decimal(50)
    assert overdue_for(c, day(60)) == timedelta(days=2)
    records = run(c, day(60))
    assert kinds(records) == [("minimum", "", "above")]  # no step due: not suspend and write-off at once
    assert records[0].event_id == derived_id("inv-1", "minimum", 2)
    assert overdue_for(c, day(61)) == timedelta(days=3)
    sent = []
    for n in range(121, 200):
        sent += [(n / 2, r.step, r.action) for r in run(c, day(n / 2)) if r.kind in ("notice", "skipped")]
    assert sent == [(65, 2, "remind"), (72, 3, "final_notice"), (79, 4, "suspend"), (88, 5, "mark_uncollectible")]


def test_a_suspension_lifted_below_the_minimum_comes_back_but_the_write_off_waits():
    """Suspended on day 22, paid down below the minimum on day 23, a refund on day 40: suspended
    again at once (the case stood past its suspend step), marked uncollectible on day 47, when
    30 days have counted (22 + 1 + 7), not on day 40."""
    c = case()
    run(c, day(22))
    c.paid = Decimal("99.50")
    assert kinds(run(c, day(23))) == [("reinstated", "", "below_minimum"), ("minimum", "", "below")]
    c.paid = Decimal(0)
    assert kinds(run(c, day(40))) == [("minimum", "", "above"), ("notice", "suspend", "resuspended")]
    assert c.suspended
    assert [r.kind for r in run(c, day(46.9))] == []
    assert [(r.kind, r.action) for r in run(c, day(47))] == [("notice", "mark_uncollectible"), ("state", "")]


def test_below_the_minimum_then_settled_then_reopened_counts_neither_stretch():
    c = case()
    run(c, day(1))
    c.paid = Decimal("99.50")
    run(c, day(2))  # below
    c.paid = Decimal(100)
    assert kinds(run(c, day(10))) == [("state", "", "paid")]  # no minimum row while settled
    c.paid = Decimal("99.50")  # refunded back below the minimum: still below, nothing to record
    assert kinds(run(c, day(30))) == [("state", "", "overdue")]
    c.paid = Decimal(0)
    assert kinds(run(c, day(60))) == [("minimum", "", "above")]
    assert overdue_for(c, day(60)) == timedelta(days=2)
    # Settled above the minimum, reopened below it: below from the refund on.
    c = case()
    run(c, day(1))
    c.paid = Decimal(100)
    run(c, day(5))
    c.paid = Decimal("99.50")
    assert kinds(run(c, day(20))) == [("state", "", "overdue"), ("minimum", "", "below")]
    c.paid = Decimal(0)
    assert kinds(run(c, day(50))) == [("minimum", "", "above")]
    assert overdue_for(c, day(50)) == timedelta(days=5)


def test_a_raised_minimum_stops_the_clock_and_rows_are_deterministic():
    higher = POLICY.model_copy(update={"min_amount_due": Decimal("80.00")})
    c = case(paid=Decimal(30))  # 70.00 due
    records = advance(c, POLICY, day(3))
    assert [r.kind for r in records] == ["state", "notice"]
    c = case(paid=Decimal(30), state="overdue", state_changes=1, steps_done={1})
    first = advance(c, higher, day(3))
    assert kinds(first) == [("minimum", "", "below")]
    assert [r.event_id for r in advance(c, higher, day(3.5))] == [r.event_id for r in first]  # decided twice
    for r in first:
        c.below_minimum, c.minimum_changes = True, r.step
        c.minimum_history.append((day(3), r.detail))
    assert advance(c, higher, day(40)) == []
    assert overdue_for(c, day(40)) == timedelta(days=3)
    assert kinds(advance(c, POLICY, day(40))) == [("minimum", "", "above")]  # lowered again


def test_no_minimum_rows_without_a_policy_or_for_an_invoice_paid_in_full():
    assert kinds(advance(case(paid=Decimal("99.50")), None, day(2))) == [("state", "", "overdue")]
    assert kinds(advance(case(paid=Decimal(100)), POLICY, day(2))) == [("state", "", "paid")]
    assert kinds(advance(case(total="0"), POLICY, day(2))) == [("state", "", "paid")]


def test_the_store_loads_the_minimum_rows_in_the_order_they_were_numbered():
    rows = [
        ("inv-1", "minimum", 2, "", "above", day(60), None),
        ("inv-1", "state", 1, "", "overdue", day(1), None),
        ("inv-1", "minimum", 1, "", "below", day(2), None),
        ("inv-1", "minimum", 3, "", "below", day(61), None),
    ]
    c: Case = case()
    ClickHouseDunningStore(_TrailClient(rows))._load_trail({"inv-1": c})  # type: ignore[arg-type]
    assert c.minimum_history == [(day(2), "below"), (day(60), "above"), (day(61), "below")]
    assert (c.below_minimum, c.minimum_changes) == (True, 3)
    assert overdue_for(c, day(70)) == timedelta(days=2 + 1)


def _at(hour: int) -> datetime:
    return DUE + hour * HOUR


# What a payment or refund leaves paid, of 100.00: nothing, all, or all but 0.50 (below 1.00).
PAID = {"refund": Decimal(0), "pay": Decimal(100), "down": Decimal("99.50")}
EVENTS = st.lists(
    st.tuples(st.integers(0, 24 * 12), st.sampled_from(["pay", "refund", "down", "run"])), min_size=1, max_size=25
)
PAUSES = st.lists(st.tuples(st.integers(START, 24 * 90), st.integers(1, 24 * 30)), max_size=2)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, pauses=PAUSES)
def test_steps_fire_when_time_owing_at_least_the_minimum_reaches_after(events, pauses):
    """As test_dunning_schedule's brute force, with payments down below the minimum: an hour
    counts only if at least min_amount_due was owed through it, past due and not paused."""
    timeline, hour = [], START
    for gap, kind in events:
        hour += gap
        timeline.append((hour, kind))
    changes = {h: kind for h, kind in timeline if kind != "run"}  # the last at an hour wins
    counted, total, owing = [0], 0, True
    for h in range(START, hour + 1):
        owing = PAID[changes[h]] == 0 if h in changes else owing
        paused = any(start <= h < start + length for start, length in pauses)
        if h >= 0 and owing and not paused:
            total += 1
        counted.append(total)
    c = case(pauses=[Pause(_at(start), _at(start + length), "promised") for start, length in pauses])
    for h, kind in timeline:
        if kind != "run":
            c.paid = PAID[kind]
        fired = {r.step for r in run(c, _at(h)) if r.kind in ("notice", "skipped")}
        so_far = timedelta(hours=counted[h - START])
        for n in fired:  # never early
            assert POLICY.steps[n - 1].after <= so_far, (n, h)
        paused = any(start <= h < start + length for start, length in pauses)
        if c.paid == 0 and not paused:  # and not late
            due = {n for n, step in enumerate(POLICY.steps, 1) if step.after <= so_far}
            assert due <= c.steps_done, (h, due - c.steps_done)
        assert c.below_minimum == (c.paid == PAID["down"]) or c.state == "paid", h
