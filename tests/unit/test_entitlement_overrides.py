"""Entitlement overrides: parsing the CloudEvent, every rejection, and which are in force when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from bastionary.entitlements.overrides import (
    OVERRIDE_TYPE,
    InvalidOverride,
    Override,
    active_overrides,
    parse_override,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)
_DROP = object()


def event(envelope: dict | None = None, **data) -> bytes:
    body = {
        "override_id": "ovr-1",
        "customer_id": "cust-1",
        "feature": "api_calls",
        "effective_at": "2024-05-01T00:00:00Z",
        "limit_delta": 5000,
    }
    body.update(data)
    base = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "//support",
        "type": OVERRIDE_TYPE,
        "time": "2024-05-01T00:00:00Z",
        "data": {k: v for k, v in body.items() if v is not _DROP},
    }
    base.update(envelope or {})
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


def code_of(value: bytes) -> str:
    with pytest.raises(InvalidOverride) as info:
        parse_override(value)
    assert info.value.message and str(info.value) == info.value.message
    return info.value.code


def test_a_limit_delta_override_parses():
    override = parse_override(event(expires_at="2024-06-01T00:00:00+02:00"))
    assert override == Override(
        event_id="evt-1",
        override_id="ovr-1",
        customer_id="cust-1",
        feature="api_calls",
        effective_at=T0,
        expires_at=datetime(2024, 5, 31, 22, tzinfo=UTC),
        limit_delta=Decimal(5000),
    )
    assert override.limit is None and override.enabled is None


def test_limit_and_enabled_overrides_parse():
    limit = parse_override(event(limit_delta=_DROP, limit="0.5"))
    assert limit.limit == Decimal("0.5") and limit.limit_delta is None
    assert parse_override(event(limit_delta=_DROP, limit=0)).limit == 0
    disabled = parse_override(event(limit_delta=_DROP, enabled=False))
    assert disabled.enabled is False and disabled.expires_at is None
    assert parse_override(event(limit_delta=_DROP, enabled=True)).enabled is True
    assert parse_override(event(limit_delta=-100)).limit_delta == Decimal(-100)


def test_overrides_are_frozen():
    override = parse_override(event())
    with pytest.raises(AttributeError):
        override.limit = Decimal(1)


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b"\xff"])
def test_invalid_json(value):
    assert code_of(value) == "invalid_json"


@pytest.mark.parametrize(
    "envelope",
    [
        {"specversion": "0.3"},
        {"specversion": _DROP},
        {"id": _DROP},
        {"id": ""},
        {"id": 7},
        {"source": _DROP},
        {"type": _DROP},
        {"time": _DROP},
        {"time": "2024-05-01T00:00:00"},  # no offset
        {"time": "yesterday"},
        {"data": _DROP},
        {"data": "text"},
        {"data": [1]},
    ],
)
def test_not_a_cloudevent(envelope):
    assert code_of(event(envelope)) == "not_cloudevent"


def test_a_json_array_is_not_a_cloudevent():
    assert code_of(b"[1, 2]") == "not_cloudevent"


@pytest.mark.parametrize("kind", ["bastionary.entitlement.override.v2", "bastionary.subscription.created.v1", ""])
def test_unknown_type(kind):
    assert code_of(event({"type": kind})) == "unknown_type"


@pytest.mark.parametrize(
    "data",
    [
        {"override_id": _DROP},
        {"override_id": ""},
        {"override_id": 1},
        {"customer_id": _DROP},
        {"customer_id": ""},
        {"feature": _DROP},
        {"feature": "API calls"},
        {"effective_at": _DROP},
        {"effective_at": None},
        {"effective_at": "2024-05-01T00:00:00"},  # naive
        {"expires_at": "2024-05-01T00:00:00Z"},  # == effective_at
        {"expires_at": "2024-04-30T00:00:00Z"},
        {"expires_at": "2024-06-01T00:00:00"},  # naive
        {"limit_delta": _DROP},  # no action
        {"limit_delta": None},
        {"limit_delta": 0},
        {"limit_delta": "0.000"},
        {"limit_delta": "NaN"},
        {"limit_delta": "inf"},
        {"limit_delta": "lots"},
        {"limit": 10},  # two actions
        {"enabled": True},
        {"limit_delta": _DROP, "limit": -1},
        {"limit_delta": _DROP, "limit": "Infinity"},
        {"limit_delta": _DROP, "limit": 1, "enabled": False},
        {"limit_delta": _DROP, "enabled": "true"},  # strict: no coercion
        {"limit_delta": _DROP, "enabled": 1},
        {"limit_delta": _DROP, "enabled": None},
        {"expiry": "2024-06-01T00:00:00Z"},  # a misspelt field must not silently grant forever
    ],
)
def test_invalid_data(data):
    assert code_of(event(**data)) == "invalid_data"


def override(override_id: str, start: datetime, end: datetime | None = None, feature: str = "api_calls", **action):
    action = action or {"limit_delta": Decimal(1)}
    return Override("evt-" + override_id, override_id, "cust-1", feature, start, end, **action)


def test_active_overrides_window_includes_effective_at_and_excludes_expires_at():
    window = override("a", T0, T0 + timedelta(days=1))
    assert active_overrides([window], "api_calls", T0 - timedelta(microseconds=1)) == []
    assert active_overrides([window], "api_calls", T0) == [window]
    assert active_overrides([window], "api_calls", T0 + timedelta(days=1, microseconds=-1)) == [window]
    assert active_overrides([window], "api_calls", T0 + timedelta(days=1)) == []


def test_overrides_without_expiry_stay_in_force():
    forever = override("a", T0)
    assert active_overrides([forever], "api_calls", T0 + timedelta(days=3650)) == [forever]


def test_active_overrides_are_in_effective_at_order_ties_by_override_id():
    late, b, a = override("z", T0 + timedelta(hours=1)), override("b", T0), override("a", T0)
    assert active_overrides([late, b, a], "api_calls", T0 + timedelta(hours=2)) == [a, b, late]


def test_active_overrides_only_of_the_feature():
    mine, other = override("a", T0), override("b", T0, feature="sso", enabled=True)
    assert active_overrides([mine, other], "api_calls", T0) == [mine]
    assert active_overrides([mine, other], "sso", T0) == [other]
    assert active_overrides([], "sso", T0) == []


def test_a_resent_override_replaces_the_earlier_one():
    first = override("a", T0, limit_delta=Decimal(5000))
    retry = Override("evt-2", "a", "cust-1", "api_calls", T0, None, limit_delta=Decimal(5000))
    assert active_overrides([first, retry], "api_calls", T0) == [retry]
    # A correction that moves the window out of force withdraws it.
    withdrawn = Override("evt-3", "a", "cust-1", "api_calls", T0, T0 + timedelta(seconds=1), limit_delta=Decimal(5000))
    assert active_overrides([first, withdrawn], "api_calls", T0 + timedelta(hours=1)) == []
