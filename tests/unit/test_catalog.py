"""The catalog YAML: meters validated up front, every problem reported in one error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bastionary.catalog import Aggregation, Catalog, CatalogError, Meter, load_catalog, parse_catalog


def meter(key="tokens", **fields) -> dict:
    return {"key": key, "event_type": "llm.completion", "aggregation": "SUM", "value_property": "$.tokens", **fields}


def catalog_error(document) -> str:
    with pytest.raises(CatalogError) as info:
        parse_catalog(document, "test.yaml")
    message = str(info.value)
    assert message.startswith("test.yaml is invalid:")
    return message


def test_valid_catalog():
    catalog = parse_catalog(
        {
            "meters": [
                meter(group_by={"model": "$.model", "region": "$['meta']['region name']"}, description="Tokens"),
                {"key": "requests", "event_type": "llm.completion", "aggregation": "COUNT"},
                {"key": "users", "event_type": "user.active", "aggregation": "UNIQUE_COUNT", "value_property": "$.uid"},
                {"key": "seats", "event_type": "seats.updated", "aggregation": "LATEST", "value_property": "$.n"},
                {"key": "peak_gb", "event_type": "storage.sampled", "aggregation": "MAX", "value_property": "$.gb[0]"},
            ],
            "dunning": {"policies": []},  # sections of later issues are allowed
        }
    )
    assert [m.key for m in catalog.meters] == ["tokens", "requests", "users", "seats", "peak_gb"]
    tokens = catalog.meter("tokens")
    assert tokens.aggregation is Aggregation.SUM
    assert tokens.value_steps == ("tokens",)
    assert tokens.group_steps == {"model": ("model",), "region": ("meta", "region name")}
    assert catalog.meter("requests").value_steps is None
    assert catalog.meter("peak_gb").value_steps == ("gb", 0)
    assert {m.key: m.event_type for m in catalog.meters} == {
        "tokens": "llm.completion",
        "requests": "llm.completion",
        "users": "user.active",
        "seats": "seats.updated",
        "peak_gb": "storage.sampled",
    }


def test_unknown_meter_lookup_lists_the_known_ones():
    catalog = parse_catalog({"meters": [meter()]})
    with pytest.raises(KeyError, match="tokens"):
        catalog.meter("nope")
    with pytest.raises(KeyError, match="none"):
        parse_catalog({"meters": []}).meter("nope")


@pytest.mark.parametrize("document", [None, {}, {"meters": []}])
def test_empty_catalogs_have_no_meters(document):
    assert parse_catalog(document).meters == []


def test_meters_are_frozen():
    m = parse_catalog({"meters": [meter()]}).meters[0]
    with pytest.raises(ValidationError):
        m.key = "other"


def test_count_may_have_a_value_property():
    m = parse_catalog({"meters": [meter(aggregation="COUNT")]}).meters[0]
    assert m.aggregation is Aggregation.COUNT


@pytest.mark.parametrize("aggregation", ["SUM", "MAX", "UNIQUE_COUNT", "LATEST"])
def test_value_property_required_for_everything_but_count(aggregation):
    message = catalog_error({"meters": [meter(aggregation=aggregation, value_property=None)]})
    assert f"{aggregation} needs value_property" in message


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"key": "Tokens"}, "meters.0.key"),
        ({"key": "1tokens"}, "meters.0.key"),
        ({"key": "tok-ens"}, "meters.0.key"),
        ({"key": "t" * 65}, "meters.0.key"),
        ({"event_type": ""}, "meters.0.event_type"),
        ({"aggregation": "MEDIAN"}, "meters.0.aggregation"),
        ({"aggregation": "sum"}, "meters.0.aggregation"),
        ({"value_property": "tokens"}, "meters.0.value_property"),
        ({"value_property": "$.items[*]"}, "meters.0.value_property"),
        ({"group_by": {"model": "$..model"}}, "meters.0.group_by"),
        ({"group_by": {"bad name": "$.model"}}, "meters.0.group_by"),
        ({"unit": "tokens"}, "meters.0.unit"),  # typos in meter fields are caught
    ],
)
def test_invalid_meter_fields(fields, fragment):
    assert fragment in catalog_error({"meters": [meter(**fields)]})


def test_missing_meter_fields():
    message = catalog_error({"meters": [{"key": "x"}]})
    assert "meters.0.event_type" in message
    assert "meters.0.aggregation" in message


def test_duplicate_meter_keys():
    message = catalog_error({"meters": [meter("a"), meter("b"), meter("a"), meter("b"), meter("c")]})
    assert "duplicate meter keys: a, b" in message


def test_every_meter_problem_is_reported_at_once():
    message = catalog_error(
        {
            "meters": [
                meter("no_value", value_property=None),
                meter("bad_path", value_property="$.a[*]"),
                meter("bad_agg", aggregation="MEDIAN"),
                meter("ok"),
            ]
        }
    )
    lines = message.splitlines()[1:]
    assert len(lines) == 3, message
    assert "meters.0" in lines[0] and "SUM needs value_property" in lines[0]
    assert "meters.1.value_property" in lines[1] and "$.a[*]" in lines[1]
    assert "meters.2.aggregation" in lines[2]


def test_duplicate_keys_are_reported_together_with_other_problems():
    message = catalog_error(
        {"meters": [meter("dup"), meter("dup"), meter("no_value", value_property=None), meter("x", aggregation="?")]}
    )
    assert "duplicate meter keys: dup" in message
    assert "SUM needs value_property" in message
    assert "meters.3.aggregation" in message


@pytest.mark.parametrize("document", [["a", "list"], "a string", {"meters": "not a list"}, {"meters": [42]}])
def test_wrong_shapes_are_catalog_errors(document):
    catalog_error(document)


def test_the_built_in_catalog_loads():
    catalog = load_catalog(None)
    assert isinstance(catalog, Catalog)
    keys = [m.key for m in catalog.meters]
    assert len(keys) == len(set(keys)) > 0
    assert {m.aggregation for m in catalog.meters} == set(Aggregation)  # the demo shows every aggregation
    for m in catalog.meters:
        assert isinstance(m, Meter)
        assert (m.value_steps is None) == (m.aggregation is Aggregation.COUNT)
        assert set(m.group_steps) == set(m.group_by)


def test_load_catalog_from_a_file(tmp_path: Path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "meters:\n"
        "  - key: api_calls\n"
        "    event_type: api.request\n"
        "    aggregation: COUNT\n"
        "    group_by: {method: $.method}\n"
    )
    catalog = load_catalog(path)
    assert catalog.meter("api_calls").group_by == {"method": "$.method"}


def test_load_catalog_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("meters:\n  - key: x\n    event_type: t\n    aggregation: SUM\n")
    with pytest.raises(CatalogError, match=r"bad\.yaml is invalid"):
        load_catalog(path)


def test_unreadable_or_malformed_files(tmp_path: Path):
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("meters: [unclosed\n")
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(broken)


def test_an_empty_file_is_an_empty_catalog(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_catalog(path).meters == []
