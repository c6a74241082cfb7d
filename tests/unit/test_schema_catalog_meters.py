"""``catalog.schema.json`` on the catalog document and its ``meters`` against ``parse_catalog``:
the same fields and constraints, the same JSONPath value properties and dimension names, and
the same verdict on a corpus of catalogs (except the differences the README lists)."""

from __future__ import annotations

import itertools
import string

import annotated_types
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bastionary.catalog import Aggregation, Catalog, Meter, parse_catalog
from bastionary.ingest.jsonpath import JsonPathError, compile_path
from tests.unit.schema_helpers import (
    CATALOG_SCHEMA,
    CATALOG_VALIDATOR,
    DEFAULT_CATALOG,
    HYPOTHESIS,
    MISSING,
    catalog_accepted,
    meter,
    schema_errors,
    validator,
)

# --- structure ------------------------------------------------------------------------

METER_SCHEMA = CATALOG_SCHEMA["$defs"]["meter"]
JSONPATH_SCHEMA = CATALOG_SCHEMA["$defs"]["jsonpath"]


def test_meter_properties_and_required_match_the_model():
    assert list(METER_SCHEMA["properties"]) == list(Meter.model_fields)
    assert METER_SCHEMA["required"] == [n for n, f in Meter.model_fields.items() if f.is_required()]
    assert list(CATALOG_SCHEMA["properties"]) == list(Catalog.model_fields)


def test_extra_keys_forbidden_in_meters_allowed_at_the_root():
    assert Meter.model_config["extra"] == "forbid" and METER_SCHEMA["additionalProperties"] is False
    assert Catalog.model_config["extra"] == "allow" and CATALOG_SCHEMA["additionalProperties"] is True


def test_aggregation_enum_matches():
    assert METER_SCHEMA["properties"]["aggregation"]["enum"] == [a.value for a in Aggregation]


def test_meter_key_constraints_match():
    metadata = Meter.model_fields["key"].metadata
    pattern = next(m.pattern for m in metadata if getattr(m, "pattern", None))
    max_len = next(m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen))
    assert METER_SCHEMA["properties"]["key"]["pattern"] == pattern
    assert METER_SCHEMA["properties"]["key"]["maxLength"] == max_len
    min_len = next(
        m.min_length for m in Meter.model_fields["event_type"].metadata if isinstance(m, annotated_types.MinLen)
    )
    assert METER_SCHEMA["properties"]["event_type"]["minLength"] == min_len


def _compiles(path: str) -> bool:
    try:
        compile_path(path)
    except JsonPathError:
        return False
    return True


JSONPATH_VALIDATOR = validator(JSONPATH_SCHEMA)
JSONPATHS = [
    "$.tokens", "$.a.b.c", "$._x", "$.a-b", "$.A9_-", "$['a b']", '$["a b"]', "$['']", '$[""]', "$[0]",
    "$.items[0]", "$.items[10].name", "$['it''s']", "$[\"it's\"]", "$['a\"b']", "$['[x]']", "$['.']",
    "$", "", "tokens", ".tokens", "$.", "$..tokens", "$.*", "$[*]", "$.a[*]", "$[-1]", "$[1:2]",
    "$.a[?(@.x)]", "$.1a", "$.-a", "$['a]", "$[\"a']", "$[ 0]", "$.a b", "$.é", "$ .a", " $.a", "$.a ",
    "$['a'", "$[0", "$[]", "@.a", "$$.a", "$.a.", "$.a..b",
]  # fmt: skip


@pytest.mark.parametrize("path", JSONPATHS)
def test_jsonpath_pattern_matches_compile_path(path):
    assert JSONPATH_VALIDATOR.is_valid(path) == _compiles(path)


# "\n" is left out: Python's re lets `$` match before a final newline (ECMA-262 does not),
# and non-ASCII digits because compile_path's `\d` takes them while the schema's [0-9] does not.
@HYPOTHESIS
@given(
    st.text(alphabet="$.[]'\"aZ_9-0 *?@:é", max_size=12).map(lambda s: "$" + s if s[:1] != "$" else s)
    | st.text(max_size=6)
)
def test_random_jsonpaths_agree(path):
    if "\n" in path or any(c.isdigit() and not c.isascii() for c in path):
        return
    assert JSONPATH_VALIDATOR.is_valid(path) == _compiles(path)


@HYPOTHESIS
@given(st.text(alphabet=string.ascii_letters + string.digits + "_- .$", max_size=8))
def test_ascii_dimension_names_agree(name):
    candidate = {"meters": [meter(group_by={name: "$.x"})]}
    assert CATALOG_VALIDATOR.is_valid(candidate) == catalog_accepted(candidate) == name.isidentifier()


# --- behaviour ------------------------------------------------------------------------


def catalog_documents() -> list[object]:
    meters: list[dict] = [meter()]
    # every aggregation with every kind of value_property
    for aggregation, value_property in itertools.product(
        [a.value for a in Aggregation] + ["sum", "Count", "AVG", "", None, 1],
        [MISSING, None, "", "$.v", "$['v w']", "$.items[0]", "v", "$", "$..v", "$[*]", 1, ["$.v"]],
    ):
        meters.append(meter(aggregation=aggregation, value_property=value_property))
    meters.append(meter(aggregation=MISSING))
    for key in ["a", "llm_tokens_2", "x" * 64, "x" * 65, "", "Tokens", "1tokens", "_tokens", "llm-tokens",
                "llm tokens", "llm.tokens", "tökens", None, 1, True, MISSING]:  # fmt: skip
        meters.append(meter(key=key))
    for event_type in ["x", "llm.completion", " ", "", None, 1, ["a"], MISSING]:
        meters.append(meter(event_type=event_type))
    for group_by in [
        {}, {"model": "$.model"}, {"model": "$.model", "region": "$['geo']['region']", "_n2": "$.a[0]"},
        {"Model": "$.m"}, {"1model": "$.m"}, {"mo-del": "$.m"}, {"mo del": "$.m"}, {"": "$.m"},
        {"model": "model"}, {"model": "$..m"}, {"model": "$"}, {"model": None}, {"model": 1}, {"model": ["$.m"]},
        None, [], ["model"], "model", MISSING,
    ]:  # fmt: skip
        meters.append(meter(group_by=group_by))
    for description in ["", "Tokens used", None, 1, MISSING]:
        meters.append(meter(description=description))
    meters += [meter(unit="tokens"), meter(price=1), meter(Key="x")]

    documents: list[object] = [{"meters": [m]} for m in meters]
    documents += [
        None,  # an empty YAML file
        {},
        {"meters": []},
        {"meters": None},
        {"meters": {}},
        {"meters": meter()},
        {"meters": "llm_tokens"},
        {"meters": [None]},
        {"meters": [[]]},
        {"meters": [meter(), meter(key="llm_requests", aggregation="COUNT", value_property=MISSING)]},
        {"meters": [meter(), meter(key="bad", aggregation="MAX", value_property=MISSING)]},
        # `plans` is a section of its own now (see "catalog: plans" below): other top-level
        # keys are still allowed, but a plan must be a plan.
        {"plans": [], "policies": {"x": 1}, "meters": [meter()]},
        {"plans": [{"id": "pro"}], "policies": {"x": 1}, "meters": [meter()]},
        {"plans": "anything"},
        {"version": 2},
        [meter()],
        "meters",
        1,
        True,
    ]
    return documents


CATALOG_DOCUMENTS = catalog_documents()


def test_catalog_corpus_holds_both_verdicts():
    verdicts = [catalog_accepted(d) for d in CATALOG_DOCUMENTS]
    assert sum(verdicts) > 25 and verdicts.count(False) > 80


@pytest.mark.parametrize("document", CATALOG_DOCUMENTS, ids=lambda d: repr(d)[:90])
def test_catalog_schema_agrees_with_parse_catalog(document):
    expected = catalog_accepted(document)
    errors = schema_errors(CATALOG_VALIDATOR, document)
    assert (not errors) == expected, f"parse_catalog accepts: {expected}; schema errors: {errors}"


def test_default_catalog_validates():
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    assert schema_errors(CATALOG_VALIDATOR, document) == []
    assert {m.key for m in parse_catalog(document).meters} == {m["key"] for m in document["meters"]}


# Differences the README lists.
def test_duplicate_meter_keys_only_the_code_rejects():
    document = {"meters": [meter(), meter(aggregation="MAX")]}
    assert CATALOG_VALIDATOR.is_valid(document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("document", [[], 0, "", False])
def test_falsy_documents_only_the_code_accepts(document):
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)  # parse_catalog reads `document or {}`


@pytest.mark.parametrize("name", ["région", "名前", "ｍｏｄｅｌ"])
def test_non_ascii_dimension_names_only_the_code_accepts(name):
    document = {"meters": [meter(group_by={name: "$.x"})]}
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)
