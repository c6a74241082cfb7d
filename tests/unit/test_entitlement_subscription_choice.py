"""Which subscription a check is answered from, and when that answer is read again.

A customer may hold several subscriptions: one in force and one booked to start later, or an
ended one beside a new one. A check answers from the one in force that started last; one
that has not begun yet neither takes access away now nor is forgotten when it begins.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bastionary.entitlements.evaluate import CustomerState
from bastionary.entitlements.state import Loaded, subscription_in_force
from bastionary.rating.invoice import Segment, Subscription
from bastionary.rating.plans import Plan

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
DAY = timedelta(days=1)
BASIC, PRO = Plan(key="basic", currency="USD"), Plan(key="pro", currency="USD")


def sub(sub_id: str, plan: Plan, start: datetime, canceled_at: datetime | None = None) -> Subscription:
    return Subscription(sub_id, "cust-1", start, (Segment(plan, start),), canceled_at)


def test_one_booked_to_start_later_leaves_the_current_one_answering_until_it_begins():
    current, booked = sub("s-1", BASIC, NOW - 30 * DAY), sub("s-2", PRO, NOW + 5 * DAY)
    assert subscription_in_force([booked, current], NOW) == (current, NOW + 5 * DAY)
    assert subscription_in_force([booked, current], NOW + 5 * DAY) == (booked, None)


def test_a_customer_whose_only_subscription_has_not_begun_is_read_again_when_it_does():
    booked = sub("s-1", PRO, NOW + DAY)
    assert subscription_in_force([booked], NOW) == (None, NOW + DAY)
    state = CustomerState("cust-1", None, None, None, False, {}, ())
    loaded = Loaded(state, next_start=NOW + DAY)
    assert not loaded.stale_at(NOW + DAY - timedelta(microseconds=1))
    assert loaded.stale_at(NOW + DAY)


def test_an_ended_subscription_does_not_hide_one_in_force():
    ended = sub("s-2", PRO, NOW - 10 * DAY, canceled_at=NOW - DAY)
    older = sub("s-1", BASIC, NOW - 30 * DAY)
    assert subscription_in_force([ended, older], NOW) == (older, None)
    assert subscription_in_force([ended], NOW) == (None, None)
    assert subscription_in_force([], NOW) == (None, None)


@given(st.lists(st.tuples(st.integers(-60, 60), st.one_of(st.none(), st.integers(-60, 90))), max_size=6))
def test_the_choice_is_in_force_started_last_and_ignores_the_order_given(spans):
    subs = [
        sub(f"s-{n}", PRO, NOW + start * DAY, None if end is None else NOW + (start + abs(end)) * DAY)
        for n, (start, end) in enumerate(spans)
    ]
    chosen, next_start = subscription_in_force(subs, NOW)
    assert subscription_in_force(list(reversed(subs)), NOW)[1] == next_start
    in_force = [s for s in subs if s.active_at(NOW)]
    if chosen is None:
        assert not in_force
    else:
        assert chosen.active_at(NOW)
        assert all(s.segments[0].start <= chosen.segments[0].start for s in in_force)
    later = [s.segments[0].start for s in subs if s.segments[0].start > NOW]
    assert next_start == (min(later) if later else None)
