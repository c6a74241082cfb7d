"""Entitlements in the catalog: the YAML shape, its validation, and references to meters."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from bastionary.catalog import CatalogError, parse_catalog
from bastionary.entitlements.spec import (
    BooleanEntitlement,
    EntitledPlan,
    Entitlement,
    MeteredEntitlement,
    StaticEntitlement,
    decimal_text,
    entitlement_problems,
)

EXAMPLE = """
entitlements:
  - {feature: sso, type: boolean, enabled: true}
  - {feature: seats, type: static, config: {max: 10}}
  - {feature: api_calls, type: metered, meter: api_requests, limit: 100000, soft: false, reset: billing_period, notify_at: [0.8, 1.0]}
  - {feature: billing_portal, type: boolean, survives_suspension: true}
"""

ADAPTER = TypeAdapter(Entitlement)


def entitlement(**fields):
    return ADAPTER.validate_python(fields)


def plan(entitlements) -> EntitledPlan:
    return EntitledPlan.model_validate({"key": "pro", "currency": "USD", "entitlements": entitlements})


def test_the_documented_yaml_parses_into_the_discriminated_models():
    parsed = plan(yaml.safe_load(EXAMPLE)["entitlements"]).entitlements
    sso, seats, api_calls, portal = parsed
    assert isinstance(sso, BooleanEntitlement) and sso.enabled and not sso.survives_suspension
    assert isinstance(seats, StaticEntitlement) and seats.config == {"max": 10}
    assert isinstance(api_calls, MeteredEntitlement)
    assert api_calls.meter == "api_requests" and api_calls.limit == Decimal(100000)
    assert api_calls.notify_at == [Decimal("0.8"), Decimal("1.0")]
    assert api_calls.reset == "billing_period" and api_calls.soft is False and api_calls.filter == {}
    assert isinstance(portal, BooleanEntitlement) and portal.survives_suspension


def test_defaults():
    assert entitlement(feature="sso", type="boolean") == BooleanEntitlement(
        feature="sso", type="boolean", enabled=True, survives_suspension=False
    )
    metered = entitlement(feature="calls", type="metered", meter="api_requests", limit=5)
    assert (metered.soft, metered.reset, metered.notify_at, metered.filter, metered.survives_suspension) == (
        False, "billing_period", [], {}, False,
    )  # fmt: skip


def test_notify_at_is_sorted_and_deduplicated_by_value():
    metered = entitlement(feature="calls", type="metered", meter="m", limit=5, notify_at=[1, "0.80", 0.5, "0.8", 1.2])
    assert metered.notify_at == [Decimal("0.5"), Decimal("0.8"), Decimal(1), Decimal("1.2")]


def test_plans_without_entitlements_have_none():
    assert EntitledPlan.model_validate({"key": "pro", "currency": "USD"}).entitlements == []


def test_models_are_frozen():
    sso = entitlement(feature="sso", type="boolean")
    with pytest.raises(ValidationError):
        sso.enabled = False


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"feature": "sso"},
        {"feature": "sso", "type": "flag"},
        {"feature": "Sso", "type": "boolean"},
        {"feature": "1sso", "type": "boolean"},
        {"feature": "_sso", "type": "boolean"},
        {"feature": "s-so", "type": "boolean"},
        {"feature": "", "type": "boolean"},
        {"feature": "sso\n", "type": "boolean"},
        {"feature": "sso", "type": "boolean", "limit": 5},  # extra field
        {"feature": "sso", "type": "boolean", "enabled": "maybe"},
        {"feature": "seats", "type": "static"},  # config is required
        {"feature": "seats", "type": "static", "config": [10]},
        {"feature": "calls", "type": "metered", "limit": 5},  # no meter
        {"feature": "calls", "type": "metered", "meter": "m"},  # no limit
        {"feature": "calls", "type": "metered", "meter": "", "limit": 5},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": -1},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": "inf"},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": "NaN"},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": "lots"},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "reset": "daily"},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "notify_at": [0]},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "notify_at": [-0.5]},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "notify_at": ["inf"]},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "notify_at": 0.8},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "filter": {"model": 1}},
        {"feature": "calls", "type": "metered", "meter": "m", "limit": 5, "config": {}},
    ],
)
def test_invalid_entitlements_are_rejected(fields):
    with pytest.raises(ValidationError):
        entitlement(**fields)


def test_zero_limit_is_allowed():
    assert entitlement(feature="calls", type="metered", meter="m", limit=0).limit == 0


def test_feature_names_are_unique_within_a_plan():
    with pytest.raises(ValidationError, match="duplicate entitlement features: sso"):
        plan([{"feature": "sso", "type": "boolean"}, {"feature": "sso", "type": "static", "config": {}}])


def test_the_same_feature_in_two_plans_is_fine():
    document = {
        "plans": [
            {"key": "pro", "currency": "USD", "entitlements": [{"feature": "sso", "type": "boolean"}]},
            {
                "key": "team",
                "currency": "USD",
                "entitlements": [{"feature": "sso", "type": "boolean", "enabled": False}],
            },
        ]
    }
    catalog = parse_catalog(document)
    assert [p.entitlements[0].enabled for p in catalog.plans] == [True, False]


def test_catalog_reports_invalid_entitlements():
    document = {"plans": [{"key": "pro", "currency": "USD", "entitlements": [{"feature": "sso", "type": "flag"}]}]}
    with pytest.raises(CatalogError, match="entitlements"):
        parse_catalog(document)


class FakeMeter:
    def __init__(self, **group_by: str):
        self.group_by = group_by


METERED = {"feature": "api_calls", "type": "metered", "meter": "api_requests", "limit": 10}


def test_entitlement_problems_names_unknown_meters_and_dimensions():
    plans = [
        plan([METERED, {**METERED, "feature": "calls_eu", "filter": {"region": "eu", "tier": "x"}}]),
        EntitledPlan.model_validate({"key": "team", "currency": "USD", "entitlements": [{**METERED, "meter": "x"}]}),
    ]
    assert entitlement_problems(plans, {"api_requests": FakeMeter(model="$.model")}) == [
        "plan pro, entitlement calls_eu: meter api_requests has no dimension region, tier",
        "plan team, entitlement api_calls: unknown meter 'x'",
    ]


def test_entitlement_problems_accepts_known_meters_and_ignores_other_types():
    plans = [
        plan([
            {**METERED, "filter": {"region": "eu"}},
            {"feature": "sso", "type": "boolean"},
            {"feature": "seats", "type": "static", "config": {"meter": "nope"}},
        ])
    ]  # fmt: skip
    assert entitlement_problems(plans, {"api_requests": FakeMeter(region="$.region")}) == []
    assert entitlement_problems([], {}) == []


def test_rating_never_loads_the_entitlements_package():
    """Rating reads prices only; the features a plan grants belong to entitlements (see test_architecture)."""
    code = "import sys, bastionary.rating.rater; assert not [m for m in sys.modules if m.startswith('bastionary.entitlements')]"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("100000", "100000"),
        ("1E+5", "100000"),
        ("0.80", "0.8"),
        ("0", "0"),
        ("-0", "0"),
        ("0.000", "0"),
        ("-1.50", "-1.5"),
        # a Decimal(38, 9) usage total of 38 digits: normalize() at 28 would round it
        ("12999999999999999999.999999987", "12999999999999999999.999999987"),
        ("-99999999999999999999999999999.999999999", "-99999999999999999999999999999.999999999"),
        ("1.2999999999999999999999999999987E+28", "12999999999999999999999999999.987"),
    ],
)
def test_decimal_text_is_plain(value, text):
    assert decimal_text(Decimal(value)) == text


@given(st.integers(-(10**38) + 1, 10**38 - 1), st.integers(0, 9), st.booleans())
def test_decimal_text_is_every_digit_of_the_value_in_one_plain_spelling(nanos, padding, minus):
    # Any Decimal(38, 9) value, spelled with trailing zeros (and zero with a minus sign too)
    sign = "-" if minus and nanos == 0 else ""
    value = Decimal(f"{sign}{nanos}{'0' * padding}E-{9 + padding}")
    text = decimal_text(value)
    assert Decimal(text) == value  # nothing rounded
    assert "E" not in text and text != "-0" and not ("." in text and text.endswith(("0", ".")))
