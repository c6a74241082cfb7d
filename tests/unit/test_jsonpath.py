"""The JSONPath subset used by meters: compile once at catalog load, extract per event."""

from __future__ import annotations

import pytest

from bastionary.ingest.jsonpath import MISSING, JsonPathError, compile_path, extract


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("$.tokens", ("tokens",)),
        ("$.usage.input_tokens", ("usage", "input_tokens")),
        ("$.content-length", ("content-length",)),
        ("$._private", ("_private",)),
        ("$['a b']", ("a b",)),
        ('$["a b"]', ("a b",)),
        ("$['it.has.dots']", ("it.has.dots",)),
        ('$["single\'quote"]', ("single'quote",)),
        ("$['']", ("",)),
        ("$.items[0]", ("items", 0)),
        ("$[3]", (3,)),
        ("$.items[12].price", ("items", 12, "price")),
        ("$['usage'][\"in put\"][0].n", ("usage", "in put", 0, "n")),
    ],
)
def test_compile_path_accepts_the_supported_subset(path, steps):
    assert compile_path(path) == steps


def test_indices_compile_to_ints_and_names_to_strings():
    steps = compile_path("$['0'][0]")
    assert steps == ("0", 0)
    assert isinstance(steps[0], str) and isinstance(steps[1], int)


@pytest.mark.parametrize(
    "path",
    [
        "",  # empty
        "tokens",  # no root
        "a.b",
        "$",  # the whole object, never a meter value
        "$.",
        "$..tokens",  # recursive descent
        "$.*",  # wildcard
        "$[*]",
        "$.items[*].price",
        "$.items[-1]",  # negative index
        "$.items[0:2]",  # slice
        "$.items[?(@.price > 1)]",  # filter
        "$.1abc",  # dotted names must start like identifiers
        "$.a b",
        "$['unterminated",
        "$[\"mixed']",
        "$.a.",
        " $.a",
        "$.a ",
        "$.a[0",
    ],
)
def test_compile_path_rejects_everything_else(path):
    with pytest.raises(JsonPathError):
        compile_path(path)


def test_jsonpath_error_is_a_value_error():
    # pydantic turns ValueError raised in validators into catalog errors.
    assert issubclass(JsonPathError, ValueError)


DOC = {
    "tokens": 42,
    "usage": {"in put": 7, "nested": {"deep": "x"}},
    "items": [{"price": 1.5}, {"price": 2}],
    "nothing": None,
    "flag": False,
    "0": "zero-key",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.tokens", 42),
        ("$['usage']['in put']", 7),
        ("$.usage.nested.deep", "x"),
        ("$.items[1].price", 2),
        ("$.items[0]", {"price": 1.5}),
        ("$.nothing", None),  # present but null is not missing
        ("$.flag", False),
        ("$['0']", "zero-key"),
    ],
)
def test_extract_finds_values(path, expected):
    assert extract(DOC, compile_path(path)) == expected


@pytest.mark.parametrize(
    "path",
    [
        "$.absent",
        "$.usage.absent",
        "$.items[2]",  # index out of range
        "$.items.price",  # name step on a list
        "$.usage[0]",  # index step on an object
        "$[0]",  # index step on the root object (the "0" key is a name, not an index)
        "$.tokens.more",  # step into a scalar
        "$.nothing.more",  # step into null
        "$.usage.nested.deep[0]",  # index step into a string
    ],
)
def test_extract_returns_missing_when_a_step_does_not_exist(path):
    assert extract(DOC, compile_path(path)) is MISSING


def test_extract_on_non_container_roots():
    assert extract("text", ("a",)) is MISSING
    assert extract(None, (0,)) is MISSING
    assert extract([10, 20], (1,)) == 20


def test_missing_is_distinct_from_every_json_value():
    for value in (None, False, 0, "", [], {}):
        assert MISSING is not value and value != MISSING
