"""``catalog.schema.json`` on a plan's ``entitlements`` (boolean, static and metered) against
``parse_catalog``: the same fields and discriminator, and the same verdict on a corpus of
entitlement lists (except the rules and spellings only the code knows, listed here and in the
README)."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given

from bastionary.entitlements import spec as entitlement_spec
from tests.unit.schema_helpers import (
    CATALOG_SCHEMA,
    CATALOG_VALIDATOR,
    DECIMAL_TEXT,
    HYPOTHESIS,
    MISSING,
    MONEY_VALUES,
    PLAN_SCHEMA,
    POSITIVE_VALUES,
    catalog_accepted,
    field_pattern,
    plan,
    plan_catalog,
    schema_errors,
)

# --- structure ------------------------------------------------------------------------

ENTITLEMENT_DEFS = {
    entitlement_spec.BooleanEntitlement: "boolean_entitlement",
    entitlement_spec.StaticEntitlement: "static_entitlement",
    entitlement_spec.MeteredEntitlement: "metered_entitlement",
}


def _tag(model: type, field: str) -> str:
    return typing.get_args(model.model_fields[field].annotation)[0]


@pytest.mark.parametrize("model", list(ENTITLEMENT_DEFS), ids=lambda m: m.__name__)
def test_entitlement_definitions_match_the_models(model):
    schema = CATALOG_SCHEMA["$defs"][ENTITLEMENT_DEFS[model]]
    assert list(schema["properties"]) == list(model.model_fields)
    assert schema["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and schema["additionalProperties"] is False
    assert schema["properties"]["type"] == {"const": _tag(model, "type")}
    assert (
        CATALOG_SCHEMA["$defs"]["feature"]["pattern"]
        == field_pattern(model, "feature")
        == entitlement_spec.FEATURE_REGEX
    )


def test_entitlement_types_match_the_discriminator():
    tags = [_tag(m, "type") for m in ENTITLEMENT_DEFS]
    schema = CATALOG_SCHEMA["$defs"]["entitlement"]
    assert schema["properties"]["type"]["enum"] == tags
    assert [b["if"]["properties"]["type"]["const"] for b in schema["allOf"]] == tags
    assert [b["then"]["$ref"] for b in schema["allOf"]] == [f"#/$defs/{ENTITLEMENT_DEFS[m]}" for m in ENTITLEMENT_DEFS]
    assert PLAN_SCHEMA["properties"]["entitlements"]["items"] == {"$ref": "#/$defs/entitlement"}


def test_metered_reset_matches_the_literal():
    reset = CATALOG_SCHEMA["$defs"]["metered_entitlement"]["properties"]["reset"]
    assert reset["enum"] == list(typing.get_args(entitlement_spec.MeteredEntitlement.model_fields["reset"].annotation))


# --- behaviour ------------------------------------------------------------------------

ENTITLEMENTS = {
    "boolean": {"feature": "sso", "type": "boolean", "enabled": True, "survives_suspension": False},
    "static": {"feature": "support", "type": "static", "config": {"tier": "gold", "sla_hours": 4}, "survives_suspension": True},
    "metered": {
        "feature": "api_calls", "type": "metered", "meter": "api_requests", "limit": 1000, "soft": True,
        "reset": "billing_period", "notify_at": [0.8, "1.0", 1.5], "filter": {},
    },
}  # fmt: skip


def entitlement(kind: str, /, **overrides: object) -> dict:
    merged = {**ENTITLEMENTS[kind], **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


def with_entitlements(*entitlements: object) -> dict:
    return plan_catalog(plan(entitlements=list(entitlements)))


# Boolean-like values on which the schema and pydantic's bool agree (pydantic also reads
# 1, 0, "yes", "true", "on"...: see ENTITLEMENT_CODE_ONLY_ACCEPTS).
BOOLEAN_VALUES = [True, False, None, "x", [], {}, 2, MISSING]


def entitlement_catalog_documents() -> list[object]:
    documents: list[object] = [with_entitlements(*(entitlement(k) for k in ENTITLEMENTS))]
    documents += [plan_catalog(plan(entitlements=v)) for v in [[], [None], [1], ["sso"], [[]], [{}], None, {}, "sso"]]
    for kind in ENTITLEMENTS:
        documents.append(with_entitlements(entitlement(kind)))
        for feature in ["sso", "a", "a_1", "x9", "", "Sso", "1a", "_a", "a-b", "a b", "é", None, 1, MISSING]:
            documents.append(with_entitlements(entitlement(kind, feature=feature)))
        documents += [with_entitlements(entitlement(kind, survives_suspension=v)) for v in BOOLEAN_VALUES]
        for tag in [MISSING, None, 1, "Boolean", "bool", "quota", ["boolean"]]:
            documents.append(with_entitlements(entitlement(kind, type=tag)))
        documents.append(with_entitlements(entitlement(kind, description="x")))
    # another type's fields
    documents += [
        with_entitlements(entitlement("boolean", meter="api_requests")),
        with_entitlements(entitlement("boolean", config={})),
    ]
    documents += [
        with_entitlements(entitlement("static", enabled=True)),
        with_entitlements(entitlement("metered", config={})),
    ]
    documents += [with_entitlements(entitlement("boolean", enabled=v)) for v in BOOLEAN_VALUES]
    documents += [
        with_entitlements(entitlement("static", config=v))
        for v in [{}, {"a": [1, {"b": None}]}, None, [], "x", 1, MISSING]
    ]
    documents += [
        with_entitlements(entitlement("metered", meter=v))
        for v in ["api_requests", "llm_tokens", "", None, 1, ["api_requests"], MISSING]
    ]
    documents += [with_entitlements(entitlement("metered", limit=v)) for v in [*MONEY_VALUES, None, MISSING]]
    documents += [with_entitlements(entitlement("metered", soft=v)) for v in BOOLEAN_VALUES]
    documents += [
        with_entitlements(entitlement("metered", reset=v))
        for v in ["billing_period", "monthly", "Billing_Period", "", None, 1, MISSING]
    ]
    documents += [
        with_entitlements(entitlement("metered", notify_at=v))
        for v in [[], [0.8], ["0.8", 1, 1.5], [0.8, "0.80"], [1.5, 0.5], 0.8, "0.8", None, {}, [None], [[0.8]], MISSING]
    ]
    documents += [with_entitlements(entitlement("metered", notify_at=[v])) for v in POSITIVE_VALUES]
    for filter_ in [
        {},
        {"model": "small"},
        {"model": 1},
        {"model": None},
        {"model": ["small"]},
        [],
        None,
        "model",
        MISSING,
    ]:
        documents.append(with_entitlements(entitlement("metered", meter="llm_tokens", filter=filter_)))
    return documents


ENTITLEMENT_CATALOG_DOCUMENTS = entitlement_catalog_documents()


def test_entitlement_corpus_holds_both_verdicts():
    verdicts = [catalog_accepted(d) for d in ENTITLEMENT_CATALOG_DOCUMENTS]
    assert sum(verdicts) > 60 and verdicts.count(False) > 100


@pytest.mark.parametrize(
    "document",
    ENTITLEMENT_CATALOG_DOCUMENTS,
    ids=lambda d: repr(d["plans"][0].get("entitlements") if isinstance(d["plans"][0], dict) else d)[:90],
)
def test_entitlement_schema_agrees_with_parse_catalog(document):
    expected = catalog_accepted(document)
    errors = schema_errors(CATALOG_VALIDATOR, document)
    assert (not errors) == expected, f"parse_catalog accepts: {expected}; schema errors: {errors}"


# Differences, listed in the README with the others.
ENTITLEMENT_CODE_ONLY_REJECTS = {
    "duplicate features": with_entitlements(entitlement("boolean"), entitlement("static", feature="sso")),
    "unknown meter": with_entitlements(entitlement("metered", meter="no_such_meter")),
    "dimension not in the meter's group_by": with_entitlements(
        entitlement("metered", meter="llm_tokens", filter={"region": "eu"})
    ),
    "dimension of a meter without group_by": with_entitlements(entitlement("metered", filter={"model": "small"})),
}
# pydantic's lax bool and the code's Decimal() read more spellings than the schema describes.
ENTITLEMENT_CODE_ONLY_ACCEPTS = {
    "enabled: 1": with_entitlements(entitlement("boolean", enabled=1)),
    "enabled: 'yes'": with_entitlements(entitlement("boolean", enabled="yes")),
    "soft: 'true'": with_entitlements(entitlement("metered", soft="true")),
    "survives_suspension: 0": with_entitlements(entitlement("static", survives_suspension=0)),
    "blank-padded limit": with_entitlements(entitlement("metered", limit=" 100 ")),
    "negative zero limit": with_entitlements(entitlement("metered", limit="-0")),
}


@pytest.mark.parametrize("name", list(ENTITLEMENT_CODE_ONLY_REJECTS))
def test_entitlement_rules_only_the_code_checks(name):
    document = ENTITLEMENT_CODE_ONLY_REJECTS[name]
    assert CATALOG_VALIDATOR.is_valid(document), schema_errors(CATALOG_VALIDATOR, document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("name", list(ENTITLEMENT_CODE_ONLY_ACCEPTS))
def test_entitlement_spellings_only_the_code_accepts(name):
    document = ENTITLEMENT_CODE_ONLY_ACCEPTS[name]
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_entitlement_limits_agree(text):
    document = with_entitlements(entitlement("metered", limit=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_notify_at_fractions_agree(text):
    document = with_entitlements(entitlement("metered", notify_at=[text]))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)
