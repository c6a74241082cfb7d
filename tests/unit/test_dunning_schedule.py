"""When dunning steps fire, over any history of payments, refunds and pauses: never before the
policy's ``after`` counted over the time the invoice was past due, unpaid and not paused, and
no later than the first run once it is. And what the store loads for the engine to count it."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.dunning.engine import Case, Pause
from bastionary.storage.dunning import ClickHouseDunningStore

from .test_dunning_engine import DUE, POLICY, case, run

HOUR = timedelta(hours=1)
START = -48  # hours from due_at: the history starts before the invoice is due

# (hours since the previous event, what happens): every event is followed by a run of the
# dunning timer at that instant, so the recorded states change exactly when the balance does.
EVENTS = st.lists(
    st.tuples(st.integers(0, 24 * 12), st.sampled_from(["pay", "refund", "run"])), min_size=1, max_size=25
)
PAUSES = st.lists(st.tuples(st.integers(START, 24 * 90), st.integers(1, 24 * 30)), max_size=2)


def at(hour: int) -> datetime:
    return DUE + hour * HOUR


def counted_hours(events: list[tuple[int, str]], pauses: list[tuple[int, int]], until: int) -> list[int]:
    """Hours from due_at up to each hour < ``until`` that count for the policy, by brute force:
    hour h counts if the invoice was unpaid through it and no pause covered it."""
    unpaid, counted, total = True, [0], 0
    changes = {hour: kind == "refund" for hour, kind in events if kind != "run"}  # the last at an hour wins
    for hour in range(START, until):
        unpaid = changes.get(hour, unpaid)
        paused = any(start <= hour < start + length for start, length in pauses)
        if hour >= 0 and unpaid and not paused:
            total += 1
        counted.append(total)
    return counted  # counted[hour - START]: hours counted before ``hour``


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, pauses=PAUSES)
def test_steps_fire_when_unpaid_unpaused_time_past_due_reaches_after(events, pauses):
    timeline, hour = [], START
    for gap, kind in events:
        hour += gap
        timeline.append((hour, kind))
    counted = counted_hours(timeline, pauses, hour + 1)
    c = case(pauses=[Pause(at(start), at(start + length), "promised") for start, length in pauses])
    for hour, kind in timeline:
        if kind == "pay":
            c.paid = Decimal(100)
        elif kind == "refund":
            c.paid = Decimal(0)
        fired = {r.step for r in run(c, at(hour)) if r.kind in ("notice", "skipped")}
        so_far = timedelta(hours=counted[hour - START])
        for n in fired:  # never early
            assert POLICY.steps[n - 1].after <= so_far, (n, hour)
        paused = any(start <= hour < start + length for start, length in pauses)
        if c.paid == 0 and not paused:  # and not late
            due = {n for n, step in enumerate(POLICY.steps, 1) if step.after <= so_far}
            assert due <= c.steps_done, (hour, due - c.steps_done)


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]):
        self.result_rows = rows


class _TrailClient:
    """Answers the trail query with fixed rows, in the SELECT's column order."""

    def __init__(self, rows: list[tuple[Any, ...]]):
        self.rows = rows

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> _Rows:
        assert "FROM dunning_events" in sql
        return _Rows(self.rows)


def test_the_store_loads_every_state_row_in_the_order_they_were_numbered():
    """The engine reads from the state rows when the case stood settled; the store gives them
    all, by number (the trail query orders by ``at``, which a clock set back would disorder)."""
    rows = [
        ("inv-1", "state", 2, "", "paid", at(48), None),
        ("inv-1", "state", 1, "", "overdue", at(36), None),
        ("inv-1", "notice", 1, "remind", "", at(24), None),
        ("inv-1", "state", 3, "", "overdue", at(24 * 90), None),
    ]
    c: Case = case()
    ClickHouseDunningStore(_TrailClient(rows))._load_trail({"inv-1": c})  # type: ignore[arg-type]
    assert c.state_history == [(at(36), "overdue"), (at(48), "paid"), (at(24 * 90), "overdue")]
    assert (c.state, c.state_changes, c.steps_done) == ("overdue", 3, {1})


@settings(max_examples=300, deadline=None)
@given(moves=st.lists(st.tuples(st.integers(0, 24 * 15), st.integers(-100_00, 100_00)), min_size=1, max_size=20))
def test_a_suspension_lasts_only_while_an_amount_worth_dunning_is_owed(moves):
    """Payments (positive cents) and refunds (negative) at any time: after every run, a case
    left with less than min_amount_due (nothing, or a remainder never dunned) keeps no
    suspension, and a remainder is still owed: the case is not recorded paid."""
    c, hour = case(), 0
    for gap, cents in moves:
        hour += gap
        c.paid = max(min(c.paid + Decimal(cents) / 100, Decimal(100)), Decimal(0))
        run(c, at(hour))
        if c.amount_due < POLICY.min_amount_due:
            assert not c.suspended, (hour, c.amount_due)
        assert (c.state == "paid") == (c.amount_due == 0), (hour, c.amount_due)
