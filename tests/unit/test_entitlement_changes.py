"""Changes on ``entitlements.changes``: when each is due, their ids, and re-deriving after a crash."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.entitlements.changes import (
    CHANGE_NAMESPACE,
    Change,
    change_event,
    change_id,
    due_changes,
)
from bastionary.entitlements.evaluate import CustomerState
from bastionary.entitlements.overrides import Override
from bastionary.entitlements.spec import EntitledPlan

P1 = datetime(2024, 5, 1, tzinfo=UTC)
P2 = datetime(2024, 6, 1, tzinfo=UTC)
P3 = datetime(2024, 7, 1, tzinfo=UTC)
NOW = datetime(2024, 5, 15, tzinfo=UTC)

PLAN = EntitledPlan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "entitlements": [
            {"feature": "sso", "type": "boolean"},
            {
                "feature": "api_calls",
                "type": "metered",
                "meter": "api_requests",
                "limit": 1000,
                "notify_at": [0.5, 0.8, 1],
            },
            {
                "feature": "tokens",
                "type": "metered",
                "meter": "llm_tokens",
                "limit": 100,
                "soft": True,
                "notify_at": [1, 1.5],
            },
        ],
    }
)


def state(api_calls=0, tokens=0, suspended=False, period=(P1, P2), overrides=(), plan=PLAN) -> CustomerState:
    usage = {"api_calls": Decimal(api_calls), "tokens": Decimal(tokens)}
    return CustomerState("cust-1", plan, period[0], period[1], suspended, usage, tuple(overrides))


def kinds(changes):
    return [(c.kind, c.feature, c.detail.get("fraction")) for c in changes]


def settle(current: CustomerState, recorded: list[Change], now: datetime = NOW) -> list[Change]:
    """Emit what is due and record it, as the worker does; return the new changes."""
    due = due_changes(current, recorded, now)
    recorded.extend(due)
    assert due_changes(current, recorded, now) == []  # idempotent once recorded
    return due


# --- thresholds ------------------------------------------------------------------------


def test_nothing_is_due_below_every_threshold():
    assert due_changes(state(api_calls=499), [], NOW) == []


def test_each_threshold_once_per_period():
    recorded: list[Change] = []
    assert kinds(settle(state(api_calls=500), recorded)) == [("threshold", "api_calls", "0.5")]
    assert settle(state(api_calls=700), recorded) == []
    first = settle(state(api_calls=800), recorded)
    assert kinds(first) == [("threshold", "api_calls", "0.8")]
    assert first[0].detail == {"fraction": "0.8", "usage": "800", "limit": "1000"}
    assert first[0].period_start == P1 and first[0].customer_id == "cust-1"


def test_crossing_several_thresholds_at_once_emits_each_in_order():
    due = due_changes(state(api_calls=1000), [], NOW)
    assert kinds(due) == [
        ("threshold", "api_calls", "0.5"),
        ("threshold", "api_calls", "0.8"),
        ("threshold", "api_calls", "1"),
        ("exhausted", "api_calls", None),
    ]


def test_thresholds_start_again_in_a_new_period():
    recorded: list[Change] = []
    settle(state(api_calls=600), recorded)
    again = settle(state(api_calls=600, period=(P2, P3)), recorded)
    assert kinds(again) == [("threshold", "api_calls", "0.5")]
    assert again[0].change_id != recorded[0].change_id


def test_thresholds_follow_the_effective_limit():
    grant = Override("e", "o", "cust-1", "api_calls", P1, None, limit_delta=Decimal(1000))
    assert due_changes(state(api_calls=900, overrides=[grant]), [], NOW) == []
    assert kinds(due_changes(state(api_calls=1000, overrides=[grant]), [], NOW)) == [("threshold", "api_calls", "0.5")]


def test_no_thresholds_on_a_zero_limit():
    zero = Override("e", "o", "cust-1", "api_calls", P1, None, limit=Decimal(0))
    assert kinds(due_changes(state(overrides=[zero]), [], NOW)) == [("exhausted", "api_calls", None)]


def test_a_recorded_threshold_matches_by_value():
    recorded = due_changes(state(api_calls=500), [], NOW)
    recorded = [replace(recorded[0], detail={**recorded[0].detail, "fraction": "0.50"})]
    assert due_changes(state(api_calls=500), recorded, NOW) == []


def test_soft_limits_notify_past_the_limit_but_never_exhaust():
    recorded: list[Change] = []
    assert kinds(settle(state(tokens=100), recorded)) == [("threshold", "tokens", "1")]
    assert kinds(settle(state(tokens=10**6), recorded)) == [("threshold", "tokens", "1.5")]
    assert all(c.kind == "threshold" for c in recorded)


# --- exhausted / restored --------------------------------------------------------------


def exhaustion(changes):
    return [c.kind for c in changes if c.kind in ("exhausted", "restored")]


def test_exhausted_then_restored_alternate():
    recorded: list[Change] = []
    settle(state(api_calls=999), recorded)
    exhausted = settle(state(api_calls=1000), recorded)
    assert exhaustion(exhausted) == ["exhausted"]
    detail = next(c for c in exhausted if c.kind == "exhausted").detail
    assert detail == {"usage": "1000", "limit": "1000", "reset_at": "2024-06-01T00:00:00Z"}
    assert settle(state(api_calls=2000), recorded) == []  # still exhausted: nothing new

    grant = Override("e", "o", "cust-1", "api_calls", P1, None, limit_delta=Decimal(5000))
    assert exhaustion(settle(state(api_calls=2000, overrides=[grant]), recorded)) == ["restored"]
    assert exhaustion(settle(state(api_calls=6000, overrides=[grant]), recorded)) == ["exhausted"]
    assert exhaustion(recorded) == ["exhausted", "restored", "exhausted"]
    ids = [c.change_id for c in recorded]
    assert len(set(ids)) == len(ids)


def test_restored_only_after_exhausted():
    assert due_changes(state(api_calls=10), [], NOW) == []


def test_exhaustion_is_per_period():
    recorded: list[Change] = []
    settle(state(api_calls=1000), recorded)
    # The new period starts unexhausted: no restored for it, and the old period's history is not consulted.
    assert settle(state(api_calls=0, period=(P2, P3)), recorded) == []
    assert exhaustion(settle(state(api_calls=1000, period=(P2, P3)), recorded)) == ["exhausted"]


def test_the_sequence_number_counts_same_kind_changes():
    recorded: list[Change] = []
    grant = Override("e", "o", "cust-1", "api_calls", P1, None, limit_delta=Decimal(5000))
    for _ in range(3):
        settle(state(api_calls=1000), recorded)
        settle(state(api_calls=1000, overrides=[grant]), recorded)
    ids = {(c.kind, c.change_id) for c in recorded if c.kind in ("exhausted", "restored")}
    expected = {
        (kind, change_id("cust-1", "api_calls", P1, kind, str(n)))
        for kind in ("exhausted", "restored")
        for n in (1, 2, 3)
    }
    assert ids == expected


# --- suspended / reinstated ------------------------------------------------------------


def test_suspended_and_reinstated_alternate_per_customer():
    recorded: list[Change] = []
    assert settle(state(), recorded) == []
    suspended = settle(state(suspended=True), recorded)
    assert [(c.kind, c.feature, c.period_start, c.detail) for c in suspended] == [("suspended", "*", None, {})]
    assert settle(state(suspended=True, period=(P2, P3)), recorded) == []  # across periods
    reinstated = settle(state(suspended=False, period=(P2, P3)), recorded)
    assert [c.kind for c in reinstated] == ["reinstated"]
    again = settle(state(suspended=True, period=(P2, P3)), recorded)
    assert again[0].change_id == change_id("cust-1", "*", None, "suspended", "2")


def test_suspension_without_a_plan_is_still_reported():
    assert [c.kind for c in due_changes(state(suspended=True, plan=None), [], NOW)] == ["suspended"]


def test_no_plan_or_no_period_means_no_usage_changes():
    assert due_changes(state(api_calls=5000, plan=None), [], NOW) == []
    assert due_changes(state(api_calls=5000, period=(None, None)), [], NOW) == []


# --- ids -------------------------------------------------------------------------------


def test_ids_are_uuid5_of_the_documented_key():
    threshold = due_changes(state(api_calls=500), [], NOW)[0]
    key = "cust-1|api_calls|2024-05-01T00:00:00+00:00|threshold|0.5"
    assert threshold.change_id == str(uuid.uuid5(CHANGE_NAMESPACE, key))
    suspended = due_changes(state(suspended=True), [], NOW)[0]
    assert suspended.change_id == str(uuid.uuid5(CHANGE_NAMESPACE, "cust-1|*|-|suspended|1"))


def test_ids_do_not_depend_on_the_time_zone_of_the_period():
    paris = timezone(timedelta(hours=2))
    local = (P1.astimezone(paris), P2.astimezone(paris))
    assert due_changes(state(api_calls=1000, period=local), [], NOW) == due_changes(state(api_calls=1000), [], NOW)


def test_rederiving_after_a_crash_gives_the_same_changes():
    recorded: list[Change] = []
    settle(state(api_calls=1000), recorded)
    grant = Override("e", "o", "cust-1", "api_calls", P1, None, limit_delta=Decimal(5000))
    before_crash = due_changes(state(api_calls=1000, overrides=[grant], suspended=True), list(recorded), NOW)
    after_restart = due_changes(state(api_calls=1000, overrides=[grant], suspended=True), list(recorded), NOW)
    assert before_crash == after_restart and before_crash


# --- the property, over random histories -----------------------------------------------

steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # period index
        st.integers(0, 2500),  # api_calls usage
        st.integers(0, 300),  # tokens usage
        st.booleans(),  # suspended
        st.sampled_from([None, Decimal(-2000), Decimal(500), Decimal(5000)]),  # a limit_delta in force
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_history_is_idempotent_alternating_and_unique(history):
    periods = [(P1, P2), (P2, P3), (P3, P3 + timedelta(days=31))]
    recorded: list[Change] = []
    for period, calls, tokens, suspended, delta in history:
        overrides = [] if delta is None else [Override("e", "o", "cust-1", "api_calls", P1, None, limit_delta=delta)]
        current = state(calls, tokens, suspended, periods[period], overrides)
        now = periods[period][0] + timedelta(days=1)
        assert due_changes(current, recorded, now) == due_changes(current, list(recorded), now)  # deterministic
        settle(current, recorded, now)
    ids = [c.change_id for c in recorded]
    assert len(ids) == len(set(ids))
    keys = {(c.feature, c.period_start) for c in recorded}
    for feature, period in keys:
        toggles = [
            c.kind for c in recorded if (c.feature, c.period_start) == (feature, period) and c.kind != "threshold"
        ]
        if feature == "*":
            assert toggles == ["suspended", "reinstated"] * (len(toggles) // 2) + ["suspended"] * (len(toggles) % 2)
        else:
            assert toggles == ["exhausted", "restored"] * (len(toggles) // 2) + ["exhausted"] * (len(toggles) % 2)
        fractions = [
            c.detail["fraction"]
            for c in recorded
            if (c.feature, c.period_start) == (feature, period) and c.kind == "threshold"
        ]
        assert len(fractions) == len(set(fractions))
    assert not any(c.kind in ("exhausted", "restored") for c in recorded if c.feature == "tokens")


# --- the CloudEvent --------------------------------------------------------------------


def test_change_event_is_a_cloudevent():
    change = next(c for c in due_changes(state(api_calls=1000), [], NOW) if c.kind == "exhausted")
    event = orjson.loads(change_event(change, datetime(2024, 5, 15, 14, tzinfo=timezone(timedelta(hours=2)))))
    assert event == {
        "specversion": "1.0",
        "id": change.change_id,
        "source": "bastionary/entitlements",
        "type": "bastionary.entitlement.exhausted.v1",
        "subject": "cust-1",
        "time": "2024-05-15T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "change_id": change.change_id,
            "customer_id": "cust-1",
            "feature": "api_calls",
            "period_start": "2024-05-01T00:00:00Z",
            "usage": "1000",
            "limit": "1000",
            "reset_at": "2024-06-01T00:00:00Z",
        },
    }


def test_change_event_types_and_customer_wide_period():
    for change in due_changes(state(api_calls=500, suspended=True), [], NOW):
        event = orjson.loads(change_event(change, NOW))
        assert event["type"] == f"bastionary.entitlement.{change.kind}.v1"
        assert event["data"]["period_start"] == (None if change.kind == "suspended" else "2024-05-01T00:00:00Z")


def test_detail_cannot_overwrite_the_identifying_fields():
    change = Change("id-1", "threshold", "cust-1", "api_calls", P1, {"customer_id": "someone-else", "fraction": "1"})
    data = orjson.loads(change_event(change, NOW))["data"]
    assert data["customer_id"] == "cust-1" and data["fraction"] == "1"
