"""The entitlement decision, rule by rule."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from bastionary.entitlements.evaluate import (
    CustomerState,
    Decision,
    check,
    check_all,
    effective_limit,
)
from bastionary.entitlements.overrides import Override
from bastionary.entitlements.spec import EntitledPlan

START = datetime(2024, 5, 1, tzinfo=UTC)
END = datetime(2024, 6, 1, tzinfo=UTC)
NOW = datetime(2024, 5, 15, tzinfo=UTC)

PLAN = EntitledPlan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "entitlements": [
            {"feature": "sso", "type": "boolean"},
            {"feature": "audit_log", "type": "boolean", "enabled": False},
            {"feature": "seats", "type": "static", "config": {"max": 10}},
            {"feature": "api_calls", "type": "metered", "meter": "api_requests", "limit": 1000, "notify_at": [0.8, 1]},
            {"feature": "tokens", "type": "metered", "meter": "llm_tokens", "limit": 500, "soft": True},
            {"feature": "billing_portal", "type": "boolean", "survives_suspension": True},
            {"feature": "exports", "type": "metered", "meter": "api_requests", "limit": 5, "survives_suspension": True},
        ],
    }
)


def state(
    usage: dict | None = None, overrides=(), suspended: bool = False, plan: EntitledPlan | None = PLAN
) -> CustomerState:
    usage = {k: Decimal(v) for k, v in (usage or {}).items()}
    return CustomerState("cust-1", plan, START, END, suspended, usage, tuple(overrides))


_counter = iter(range(10**6))


def override(feature: str, start: datetime = START, end: datetime | None = None, **action) -> Override:
    n = next(_counter)
    return Override(f"evt-{n}", f"ovr-{n:06d}", "cust-1", feature, start, end, **action)


# --- no subscription, not in plan ------------------------------------------------------


def test_no_subscription_denies_everything():
    decision = check(state(plan=None), "sso", NOW)
    assert decision == Decision("sso", False, reason="no_subscription")
    assert check(state(plan=None, overrides=[override("sso", enabled=True)]), "sso", NOW).reason == "no_subscription"
    assert check_all(state(plan=None), NOW) == []


def test_a_feature_not_in_the_plan_is_denied():
    assert check(state(), "sla", NOW) == Decision("sla", False, reason="not_in_plan")


def test_an_override_grants_a_feature_not_in_the_plan_as_boolean_access():
    granted = check(state(overrides=[override("sla", enabled=True)]), "sla", NOW)
    assert granted == Decision("sla", True, type="boolean")


def test_limit_overrides_do_not_grant_a_feature_not_in_the_plan():
    assert check(state(overrides=[override("sla", limit=Decimal(5))]), "sla", NOW).reason == "not_in_plan"


def test_a_granting_override_outside_its_window_grants_nothing():
    expired = override("sla", START, START + timedelta(days=1), enabled=True)
    future = override("beta", NOW + timedelta(seconds=1), enabled=True)
    assert check(state(overrides=[expired]), "sla", NOW).reason == "not_in_plan"
    assert check(state(overrides=[future]), "beta", NOW).reason == "not_in_plan"


# --- boolean and static ----------------------------------------------------------------


def test_boolean_access_is_its_enabled_flag():
    assert check(state(), "sso", NOW) == Decision("sso", True, type="boolean")
    assert check(state(), "audit_log", NOW) == Decision("audit_log", False, type="boolean", reason="disabled")


def test_an_override_enables_a_boolean_the_plan_disables():
    assert check(state(overrides=[override("audit_log", enabled=True)]), "audit_log", NOW).has_access


def test_static_returns_its_config():
    assert check(state(), "seats", NOW) == Decision("seats", True, type="static", config={"max": 10})


def test_decision_config_is_a_copy():
    check(state(), "seats", NOW).config["max"] = 99
    assert check(state(), "seats", NOW).config == {"max": 10}


# --- disabled --------------------------------------------------------------------------


@pytest.mark.parametrize("feature", ["sso", "seats", "api_calls", "billing_portal"])
def test_an_override_disables_any_type(feature):
    decision = check(state(overrides=[override(feature, enabled=False)]), feature, NOW)
    assert not decision.has_access and decision.reason == "disabled"
    assert decision.type is not None


def test_the_latest_enable_or_disable_in_force_wins():
    off = override("sso", START, enabled=False)
    on = override("sso", START + timedelta(days=1), enabled=True)
    assert check(state(overrides=[off, on]), "sso", NOW).has_access
    assert check(state(overrides=[on, off]), "sso", NOW).has_access  # effective_at order, not arrival
    assert not check(state(overrides=[off, on]), "sso", START + timedelta(hours=1)).has_access
    later_off = override("sso", START + timedelta(days=2), enabled=False)
    assert check(state(overrides=[off, on, later_off]), "sso", NOW).reason == "disabled"


def test_a_disable_that_expired_no_longer_applies():
    expired = override("sso", START, START + timedelta(days=1), enabled=False)
    assert check(state(overrides=[expired]), "sso", NOW).has_access


def test_disabled_metered_still_reports_usage():
    decision = check(state({"api_calls": 10}, overrides=[override("api_calls", enabled=False)]), "api_calls", NOW)
    assert (decision.reason, decision.usage, decision.limit, decision.balance) == ("disabled", 10, 1000, 990)


def test_disabled_is_reported_before_suspended():
    decision = check(state(suspended=True, overrides=[override("sso", enabled=False)]), "sso", NOW)
    assert decision.reason == "disabled"


def test_not_in_plan_is_reported_before_suspended():
    assert check(state(suspended=True), "sla", NOW).reason == "not_in_plan"


# --- suspension ------------------------------------------------------------------------


@pytest.mark.parametrize("feature", ["sso", "seats", "api_calls", "tokens"])
def test_suspension_denies_features_that_do_not_survive_it(feature):
    decision = check(state(suspended=True), feature, NOW)
    assert not decision.has_access and decision.reason == "suspended"


def test_suspended_metered_keeps_usage_and_limit():
    decision = check(state({"api_calls": 100}, suspended=True), "api_calls", NOW)
    assert decision == Decision(
        "api_calls", False, "metered", Decimal(100), Decimal(1000), Decimal(900), False, END, "suspended", None
    )


def test_features_that_survive_suspension_stay_available():
    assert check(state(suspended=True), "billing_portal", NOW).has_access
    assert check(state({"exports": 1}, suspended=True), "exports", NOW).has_access
    # ... but their own limits still apply.
    assert check(state({"exports": 5}, suspended=True), "exports", NOW).reason == "exhausted"


def test_features_granted_by_override_do_not_survive_suspension():
    decision = check(state(suspended=True, overrides=[override("sla", enabled=True)]), "sla", NOW)
    assert decision.reason == "suspended" and decision.type == "boolean"


# --- metered ---------------------------------------------------------------------------


def test_metered_under_the_limit():
    decision = check(state({"api_calls": "999.5"}), "api_calls", NOW)
    assert decision == Decision(
        "api_calls", True, "metered", Decimal("999.5"), Decimal(1000), Decimal("0.5"), False, END, None, None
    )


def test_metered_without_usage_counts_zero():
    decision = check(state(), "api_calls", NOW)
    assert (decision.usage, decision.balance, decision.has_access) == (0, 1000, True)


@pytest.mark.parametrize("usage", [1000, 1001, 10**9])
def test_a_hard_limit_is_exhausted_at_the_limit(usage):
    decision = check(state({"api_calls": usage}), "api_calls", NOW)
    assert not decision.has_access and decision.reason == "exhausted"
    assert decision.balance == 0 and decision.usage == usage and decision.reset_at == END


def test_a_zero_limit_is_exhausted_from_the_start():
    assert check(state(overrides=[override("api_calls", limit=Decimal(0))]), "api_calls", NOW).reason == "exhausted"


@pytest.mark.parametrize("usage", [0, 499, 500, 501, 10**9])
def test_a_soft_limit_never_denies(usage):
    decision = check(state({"tokens": usage}), "tokens", NOW)
    assert decision.has_access and decision.reason is None and decision.soft is True
    assert decision.balance == max(500 - usage, 0)


def test_reset_at_is_only_set_for_metered():
    decisions = {d.feature: d for d in check_all(state(), NOW)}
    assert {f for f, d in decisions.items() if d.reset_at is not None} == {"api_calls", "tokens", "exports"}
    assert all(d.reset_at == END for d in decisions.values() if d.type == "metered")


def test_an_extra_grant_restores_access():
    exhausted = state({"api_calls": 1200})
    assert check(exhausted, "api_calls", NOW).reason == "exhausted"
    granted = replace(exhausted, overrides=(override("api_calls", limit_delta=Decimal(5000)),))
    decision = check(granted, "api_calls", NOW)
    assert decision.has_access and decision.limit == 6000 and decision.balance == 4800


def test_a_balance_and_a_raised_limit_keep_every_digit_of_a_38_digit_column():
    """Limits and usage are Decimal(38, 9). Until 2026-12-07 the balance and a limit raised by
    an override were computed in the default 28-digit context: 86999999999999999999.50000001."""
    usage = Decimal("12999999999999999999.999999987")
    raised = override("api_calls", limit_delta=Decimal("99999999999999998999.5"))
    decision = check(state({"api_calls": usage}, overrides=[raised]), "api_calls", NOW)
    assert decision.limit == Decimal("99999999999999999999.5")
    assert decision.balance == Decimal("86999999999999999999.500000013")


# --- effective_limit -------------------------------------------------------------------


def metered(feature: str = "api_calls"):
    return next(e for e in PLAN.entitlements if e.feature == feature)


def test_effective_limit_is_the_plan_limit_without_overrides():
    assert effective_limit(metered(), [], NOW) == 1000


def test_limit_sets_and_limit_delta_adds_in_effective_at_order():
    overrides = [
        override("api_calls", START + timedelta(days=2), limit_delta=Decimal(50)),
        override("api_calls", START + timedelta(days=1), limit=Decimal(200)),
        override("api_calls", START, limit_delta=Decimal(7)),  # wiped out by the later limit
        override("sso", START, limit=Decimal(1)),  # another feature
    ]
    assert effective_limit(metered(), overrides, NOW) == 250
    assert effective_limit(metered(), overrides, START + timedelta(hours=1)) == 1007


def test_limit_delta_is_floored_at_zero_at_each_step():
    cut = override("api_calls", START, limit_delta=Decimal(-5000))
    grant = override("api_calls", START + timedelta(days=1), limit_delta=Decimal(300))
    assert effective_limit(metered(), [cut], NOW) == 0
    assert effective_limit(metered(), [cut, grant], NOW) == 300


def test_expired_grants_stop_counting():
    grant = override("api_calls", START, START + timedelta(days=7), limit_delta=Decimal(500))
    assert effective_limit(metered(), [grant], START + timedelta(days=6)) == 1500
    assert effective_limit(metered(), [grant], START + timedelta(days=7)) == 1000


# --- check_all -------------------------------------------------------------------------


def test_check_all_lists_plan_features_and_granted_ones_by_name():
    overrides = [
        override("zeta", enabled=True),
        override("beta", enabled=True),
        override("gone", START, START + timedelta(days=1), enabled=True),
        override("limited", limit=Decimal(3)),
        override("sso", enabled=False),
    ]
    decisions = check_all(state(overrides=overrides), NOW)
    names = [d.feature for d in decisions]
    assert names == sorted(
        ["sso", "audit_log", "seats", "api_calls", "tokens", "billing_portal", "exports", "beta", "zeta"]
    )
    assert {d.feature: d for d in decisions}["sso"].reason == "disabled"
    assert all(d == check(state(overrides=overrides), d.feature, NOW) for d in decisions)


def test_check_all_leaves_out_a_grant_disabled_again():
    overrides = [override("beta", START, enabled=True), override("beta", START + timedelta(days=1), enabled=False)]
    assert "beta" not in [d.feature for d in check_all(state(overrides=overrides), NOW)]


# --- to_json ---------------------------------------------------------------------------


def test_to_json_has_exactly_the_documented_keys_and_json_types():
    decision = check(state({"api_calls": Decimal("1E+2")}), "api_calls", NOW)
    assert decision.to_json() == {
        "feature": "api_calls",
        "has_access": True,
        "type": "metered",
        "usage": "100",
        "limit": "1000",
        "balance": "900",
        "soft": False,
        "reset_at": "2024-06-01T00:00:00Z",
        "reason": None,
        "config": None,
    }
    assert check(state(plan=None), "x", NOW).to_json() == {
        "feature": "x", "has_access": False, "type": None, "usage": None, "limit": None, "balance": None,
        "soft": None, "reset_at": None, "reason": "no_subscription", "config": None,
    }  # fmt: skip


def test_to_json_writes_times_in_utc():
    paris = timezone(timedelta(hours=2))
    moved = CustomerState("c", PLAN, START, datetime(2024, 6, 1, 2, tzinfo=paris), False, {}, ())
    assert check(moved, "api_calls", NOW).to_json()["reset_at"] == "2024-06-01T00:00:00Z"
