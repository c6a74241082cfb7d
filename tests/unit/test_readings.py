"""From one validated event to the readings of every meter it feeds."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from bastionary.catalog import Aggregation, parse_catalog
from bastionary.ingest.cloudevents import UsageEvent
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.ingest.jsonpath import MISSING
from bastionary.metering.readings import MeterIndex, Reading, dimension_value, numeric_value, unique_value

CATALOG = parse_catalog(
    {
        "meters": [
            {
                "key": "llm_tokens",
                "event_type": "llm.completion",
                "aggregation": "SUM",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model", "region": "$['meta']['region']"},
            },
            {"key": "llm_requests", "event_type": "llm.completion", "aggregation": "COUNT"},
            {"key": "llm_peak", "event_type": "llm.completion", "aggregation": "MAX", "value_property": "$.tokens"},
            {"key": "storage_gb", "event_type": "storage.sampled", "aggregation": "MAX", "value_property": "$.gb"},
            {"key": "seats", "event_type": "seats.updated", "aggregation": "LATEST", "value_property": "$.seats"},
            {
                "key": "active_users",
                "event_type": "user.active",
                "aggregation": "UNIQUE_COUNT",
                "value_property": "$.user.id",
            },
        ]
    }
)
INDEX = MeterIndex(CATALOG)
SUM_METER = CATALOG.meter("llm_tokens")
UNIQUE_METER = CATALOG.meter("active_users")


def usage_event(type_: str, data: dict) -> UsageEvent:
    return UsageEvent(
        specversion="1.0",
        id="e-1",
        source="test",
        type=type_,
        subject="cust-1",
        time=datetime(2024, 5, 1, tzinfo=timezone.utc),
        data=data,
    )


def readings(type_: str, data: dict) -> list[Reading]:
    return INDEX.readings(usage_event(type_, data))


def rejected(type_: str, data: dict) -> Rejection:
    with pytest.raises(Rejection) as info:
        readings(type_, data)
    assert info.value.code is ErrorClass.INVALID_METER_VALUE
    return info.value


# --- MeterIndex.readings ---------------------------------------------------------------


def test_one_event_type_feeds_every_meter_on_it():
    out = readings("llm.completion", {"tokens": 120, "model": "small", "meta": {"region": "eu"}})
    group = (("model", "small"), ("region", "eu"))
    assert out == [
        Reading("llm_tokens", Aggregation.SUM, group, value=Decimal("120")),
        Reading("llm_requests", Aggregation.COUNT, ()),
        Reading("llm_peak", Aggregation.MAX, (), value=Decimal("120")),
    ]


def test_event_type_without_a_meter_yields_no_readings():
    assert readings("something.else", {"tokens": "not even a number"}) == []


def test_group_dimensions_are_sorted_by_name_and_missing_ones_are_empty():
    (tokens, *_rest) = readings("llm.completion", {"tokens": 1})
    assert tokens.group == (("model", ""), ("region", ""))
    (tokens, *_rest) = readings("llm.completion", {"tokens": 1, "model": None, "meta": {"region": 3}})
    assert tokens.group == (("model", ""), ("region", "3"))


def test_count_needs_no_value():
    # llm_tokens would reject this event, so use a COUNT-only catalog.
    index = MeterIndex(parse_catalog({"meters": [{"key": "hits", "event_type": "hit", "aggregation": "COUNT"}]}))
    assert index.readings(usage_event("hit", {})) == [Reading("hits", Aggregation.COUNT, ())]


@pytest.mark.parametrize(
    ("type_", "data", "aggregation", "expected"),
    [
        ("storage.sampled", {"gb": 12.5}, Aggregation.MAX, Decimal("12.5")),
        ("storage.sampled", {"gb": "12.5"}, Aggregation.MAX, Decimal("12.5")),
        ("seats.updated", {"seats": 7}, Aggregation.LATEST, Decimal("7")),
        ("seats.updated", {"seats": " 7 "}, Aggregation.LATEST, Decimal("7")),
        ("seats.updated", {"seats": -3}, Aggregation.LATEST, Decimal("-3")),
    ],
)
def test_max_and_latest_readings_carry_the_value(type_, data, aggregation, expected):
    (reading,) = readings(type_, data)
    assert reading.aggregation is aggregation
    assert reading.value == expected
    assert reading.value.as_tuple().exponent == -9
    assert reading.unique is None


def test_unique_count_reading_carries_the_unique_value_not_a_number():
    (reading,) = readings("user.active", {"user": {"id": "u-1"}})
    assert reading == Reading("active_users", Aggregation.UNIQUE_COUNT, (), unique="u-1")
    assert reading.value is None


def test_all_or_nothing_when_one_meter_cannot_read_the_event():
    error = rejected("llm.completion", {"tokens": "lots", "model": "small"})
    assert "llm_tokens" in error.message


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"tokens": None},
        {"tokens": True},
        {"tokens": False},
        {"tokens": "NaN"},
        {"tokens": "nan"},
        {"tokens": "Infinity"},
        {"tokens": "-inf"},
        {"tokens": "sNaN"},
        {"tokens": "twelve"},
        {"tokens": ""},
        {"tokens": "0x10"},
        {"tokens": [1]},
        {"tokens": {"n": 1}},
    ],
)
def test_sum_rejects_values_that_are_not_finite_numbers(data):
    rejected("llm.completion", data)


# --- numeric_value ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, "0"),
        (42, "42"),
        (-5, "-5"),
        (0.1, "0.1"),  # the shortest repr, not the binary expansion of 0.1
        (1.5e-7, "0.00000015"),
        (2.5e3, "2500"),
        ("3.25", "3.25"),
        ("  8 ", "8"),
        ("1e3", "1000"),
        ("-0.000000001", "-0.000000001"),
    ],
)
def test_numeric_value_accepts_numbers_and_numeric_strings(raw, expected):
    value = numeric_value(SUM_METER, raw)
    assert value == Decimal(expected)
    assert value.as_tuple().exponent == -9  # quantized to Decimal(38, 9)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.0000000005", "0.000000000"),  # half to even: down to 0
        ("0.0000000015", "0.000000002"),  # half to even: up to 2
        ("0.0000000025", "0.000000002"),  # half to even: down to 2
        ("0.00000000251", "0.000000003"),  # above half
        ("-0.0000000015", "-0.000000002"),
        ("1.1234567894", "1.123456789"),
        ("1.1234567896", "1.123456790"),
    ],
)
def test_numeric_value_quantizes_to_nine_places_half_even(raw, expected):
    value = numeric_value(SUM_METER, raw)
    assert value == Decimal(expected)
    assert value.as_tuple().exponent == -9


def test_numeric_value_largest_representable_magnitude():
    # Decimal(38, 9) holds up to 29 integer digits.
    assert numeric_value(SUM_METER, "12345678.5") == Decimal("12345678.5")
    for raw in (1e29, "1e29", "-1e29", 10**29, "100000000000000000000000000000"):
        with pytest.raises(Rejection) as info:
            numeric_value(SUM_METER, raw)
        assert info.value.code is ErrorClass.INVALID_METER_VALUE


@pytest.mark.parametrize("raw", [10**19, "1e20", "99999999999999999999999999999.999999999"])
def test_numeric_value_accepts_large_values_below_the_limit(raw):
    assert numeric_value(SUM_METER, raw) == Decimal(raw)


@pytest.mark.parametrize(
    "raw", [MISSING, None, True, False, math.nan, math.inf, -math.inf, [], [1], {}, {"v": 1}, b"1"]
)
def test_numeric_value_rejects_non_numbers(raw):
    with pytest.raises(Rejection) as info:
        numeric_value(SUM_METER, raw)
    assert info.value.code is ErrorClass.INVALID_METER_VALUE
    assert "llm_tokens" in info.value.message


def test_missing_value_message_names_the_path():
    with pytest.raises(Rejection, match=r"\$\.tokens is missing"):
        numeric_value(SUM_METER, MISSING)


# --- unique_value ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("u-1", "u-1"), (" spaced ", " spaced "), ("1.0", "1.0")])
def test_unique_value_keeps_strings_verbatim(raw, expected):
    assert unique_value(UNIQUE_METER, raw) == expected


def test_unique_value_numbers_with_equal_values_are_the_same_unique():
    assert unique_value(UNIQUE_METER, 1) == unique_value(UNIQUE_METER, 1.0) == "1"
    assert unique_value(UNIQUE_METER, 2.5) == unique_value(UNIQUE_METER, 2.50) == "2.5"
    assert unique_value(UNIQUE_METER, 7) != unique_value(UNIQUE_METER, 8)


def test_unique_numbers_through_the_index():
    a = readings("user.active", {"user": {"id": 1}})
    b = readings("user.active", {"user": {"id": 1.0}})
    assert a == b


@pytest.mark.parametrize(("raw", "expected"), [(100, "100"), (1000.0, "1000"), (12300, "12300")])
def test_unique_value_numbers_render_in_plain_notation(raw, expected):
    assert unique_value(UNIQUE_METER, raw) == expected


@pytest.mark.parametrize("raw", [MISSING, None, "", True, False, math.nan, math.inf, [], {}, {"id": 1}])
def test_unique_value_rejects_the_rest(raw):
    with pytest.raises(Rejection) as info:
        unique_value(UNIQUE_METER, raw)
    assert info.value.code is ErrorClass.INVALID_METER_VALUE


def test_unique_count_missing_value_is_rejected_through_the_index():
    error = rejected("user.active", {"user": {}})
    assert "missing" in error.message


# --- dimension_value -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (MISSING, ""),
        (None, ""),
        ("gpt", "gpt"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),  # canonical JSON, keys sorted
        ([1, "x"], '[1,"x"]'),
    ],
)
def test_dimension_value(raw, expected):
    assert dimension_value(raw) == expected
