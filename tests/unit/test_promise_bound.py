"""A promise to pay is bounded by the invoice's policy (``max_promise``), without broker or database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from bastionary.dunning.engine import Case, InvoiceFacts, Pause, advance, overdue_for, paused_at
from bastionary.dunning.events import check_promise, parse_response
from bastionary.dunning.policy import DEFAULT_MAX_PROMISE, DunningConfig, Policy
from bastionary.rating.events import InvalidBillingEvent

RESPONDED = datetime(2026, 3, 3, 16, 20, tzinfo=UTC)
STEPS = [{"after": "P1D", "action": "remind"}, {"after": "P7D", "action": "final_notice"}]


def response(promised_by: str | None, kind: str = "promised", time: str = "2026-03-03T16:20:00Z"):
    data = {"invoice_id": "inv-1", "promised_by": promised_by} if promised_by else {"invoice_id": "inv-1"}
    event = {"specversion": "1.0", "id": "resp-1", "source": "//crm.example", "type": f"bastionary.dunning.{kind}.v1",
             "time": time, "data": data}  # fmt: skip
    return parse_response(orjson.dumps(event))


def check(promised_by: str, max_promise: timedelta = DEFAULT_MAX_PROMISE, **kwargs) -> None:
    envelope, kind, data = response(promised_by, **kwargs)
    check_promise(envelope, kind, data, max_promise)


def rejection(promised_by: str, max_promise: timedelta = DEFAULT_MAX_PROMISE, **kwargs) -> InvalidBillingEvent:
    with pytest.raises(InvalidBillingEvent) as caught:
        check(promised_by, max_promise, **kwargs)
    return caught.value


# --- the policy setting ----------------------------------------------------------------


def test_max_promise_defaults_to_thirty_days():
    assert timedelta(days=30) == DEFAULT_MAX_PROMISE
    assert Policy.model_validate({"key": "p", "steps": STEPS}).max_promise == timedelta(days=30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P7D", timedelta(days=7)),
        ("P1W", timedelta(weeks=1)),
        ("PT36H", timedelta(hours=36)),
        ("PT0.5S", timedelta(seconds=0.5)),
    ],
)
def test_max_promise_is_a_fixed_iso_duration(text, expected):
    assert Policy.model_validate({"key": "p", "max_promise": text, "steps": STEPS}).max_promise == expected


@pytest.mark.parametrize(
    "text", ["P0D", "PT0S", "PT0.0000001S", "P1M", "P1Y", "P-1D", "30 days", "", -86400, "P9999999999D"]
)
def test_max_promise_must_be_a_positive_fixed_duration(text):
    with pytest.raises(ValidationError, match="max_promise"):
        Policy.model_validate({"key": "p", "max_promise": text, "steps": STEPS})


def test_max_promise_for_a_plan_is_its_policy_s_else_the_default():
    config = DunningConfig.model_validate({"policies": [
        {"key": "strict", "applies_to": {"plans": ["pro"]}, "max_promise": "P7D", "steps": STEPS},
        {"key": "fallback", "max_promise": "P14D", "steps": STEPS},
    ]})  # fmt: skip
    assert config.max_promise_for("pro") == timedelta(days=7)
    assert config.max_promise_for("team") == timedelta(days=14)  # the default policy
    only_pro = DunningConfig.model_validate(
        {"policies": [{"key": "strict", "applies_to": {"plans": ["pro"]}, "max_promise": "P7D", "steps": STEPS}]}
    )
    assert only_pro.policy_for("free") is None
    assert only_pro.max_promise_for("free") == DEFAULT_MAX_PROMISE  # not dunned, but still bounded
    assert DunningConfig().max_promise_for("anything") == DEFAULT_MAX_PROMISE


# --- the check -------------------------------------------------------------------------


def test_a_promise_exactly_at_the_limit_is_accepted():
    check("2026-04-02T16:20:00Z")  # RESPONDED + P30D
    check("2026-03-10T16:20:00Z", timedelta(days=7))


def test_one_second_past_the_limit_is_rejected():
    error = rejection("2026-04-02T16:20:01Z")
    assert error.code == "promise_too_far"
    assert "max_promise P30D" in str(error) and "2026-04-02T16:20:00+00:00" in str(error)
    assert rejection("2026-03-10T16:20:01Z", timedelta(days=7)).code == "promise_too_far"


def test_the_limit_counts_from_the_response_time_whatever_the_offsets():
    check("2026-04-02T18:20:00+02:00")  # the limit, written in another zone
    assert rejection("2026-04-02T18:20:01+02:00").code == "promise_too_far"
    check("2026-04-02T16:20:00Z", time="2026-03-03T17:20:00+01:00")


def test_a_promise_forever_is_rejected():
    error = rejection("9999-12-31T23:59:59Z")
    assert error.code == "promise_too_far" and "9999-12-31T23:59:59+00:00" in str(error)


def test_far_dates_are_refused_by_the_storable_range_before_any_arithmetic():
    # Billing times are bounded to 1970..2105 (what the tables hold): a response dated at the
    # end of the calendar is not even parsed, and a promise past 2105 is too far whatever the
    # policy says, so time + max_promise never overflows.
    with pytest.raises(InvalidBillingEvent):
        check("9999-12-31T23:59:59Z", time="9999-12-30T00:00:00Z")
    assert rejection("9999-12-31T23:59:59Z", timedelta(days=999_999_999)).code == "promise_too_far"


@pytest.mark.parametrize("kind", ["delivered", "bounced", "opened", "clicked", "disputed", "dispute_resolved"])
def test_other_responses_are_not_checked(kind):
    envelope, parsed_kind, data = response(None, kind=kind)
    check_promise(envelope, parsed_kind, data, timedelta(seconds=1))


# --- the engine on far dates -----------------------------------------------------------


def test_the_engine_takes_a_pause_to_the_end_of_the_calendar():
    # Bounded promises never get there, but rows written before the bound can; nothing in the
    # decision adds to promised_by, so it cannot overflow.
    due = datetime(2026, 3, 1, tzinfo=UTC)
    invoice = InvoiceFacts(
        "inv-1",
        "cust-1",
        "pro",
        "USD",
        Decimal(100),
        due - timedelta(days=14),
        due,
        due - timedelta(days=44),
        due - timedelta(days=14),
    )
    far = datetime.max.replace(tzinfo=UTC)
    case = Case(invoice, pauses=[Pause(RESPONDED, far, "promised")])
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert paused_at(case, now) is not None
    assert overdue_for(case, now) == RESPONDED - due
    policy = Policy.model_validate({"key": "p", "steps": STEPS})
    assert [r.kind for r in advance(case, policy, now)] == ["state"]  # overdue, but paused: no step
