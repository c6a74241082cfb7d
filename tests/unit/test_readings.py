"""From one validated event to the readings of every meter it feeds."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.catalog import Aggregation, parse_catalog
from bastionary.ingest.cloudevents import RecordLimits, UsageEvent, ValidUsageEvent, parse_record
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
INDEX = MeterIndex(CATALOG.meters)
RECORD_MS = int(datetime(2024, 5, 2, tzinfo=UTC).timestamp() * 1000)
SUM_METER = CATALOG.meter("llm_tokens")
UNIQUE_METER = CATALOG.meter("active_users")


def contract_event(type_: str, data: dict) -> UsageEvent:
    return UsageEvent(
        specversion="1.0",
        id="e-1",
        source="test",
        type=type_,
        subject="cust-1",
        time=datetime(2024, 5, 1, tzinfo=UTC),
        data=data,
    )


def usage_event(type_: str, data: dict) -> ValidUsageEvent:
    return ValidUsageEvent.of(contract_event(type_, data))


def readings(type_: str, data: dict | bytes, index: MeterIndex = INDEX) -> list[Reading]:
    """Through the parser, as the sink does: ``data`` as a dict, or as JSON text to keep its digits."""
    text = data if isinstance(data, bytes) else orjson.dumps(data)
    value = orjson.dumps(contract_event(type_, {}).model_dump(mode="json")).replace(b'"data":{}', b'"data":' + text)
    parsed = parse_record(value, None, RECORD_MS, RecordLimits(1 << 20, 10, timedelta(0)))
    if parsed.rejection is not None:
        raise parsed.rejection
    (member,) = parsed.members
    assert member.event is not None, member.rejection
    return index.readings(member.event, parsed.exact_data, 0)


def rejected(type_: str, data: dict | bytes, code: ErrorClass = ErrorClass.INVALID_METER_VALUE) -> Rejection:
    with pytest.raises(Rejection) as info:
        readings(type_, data)
    assert info.value.code is code
    return info.value


# --- MeterIndex.readings ---------------------------------------------------------------


def test_one_event_type_feeds_every_meter_on_it():
    out = readings("llm.completion", {"tokens": 120, "model": "small", "meta": {"region": "eu"}})
    group = (("model", "small"), ("region", "eu"))
    assert out == [
        Reading("llm_tokens", Aggregation.SUM, group, value=Decimal(120)),
        Reading("llm_requests", Aggregation.COUNT, ()),
        Reading("llm_peak", Aggregation.MAX, (), value=Decimal(120)),
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
    index = MeterIndex(parse_catalog({"meters": [{"key": "hits", "event_type": "hit", "aggregation": "COUNT"}]}).meters)
    assert readings("hit", {}, index) == [Reading("hits", Aggregation.COUNT, ())]


@pytest.mark.parametrize(
    ("type_", "data", "aggregation", "expected"),
    [
        ("storage.sampled", {"gb": 12.5}, Aggregation.MAX, Decimal("12.5")),
        ("storage.sampled", {"gb": "12.5"}, Aggregation.MAX, Decimal("12.5")),
        ("seats.updated", {"seats": 7}, Aggregation.LATEST, Decimal(7)),
        ("seats.updated", {"seats": "7"}, Aggregation.LATEST, Decimal(7)),
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
        {"tokens": "1_000"},  # Python's Decimal would take it; the contract does not
        {"tokens": " 8 "},
        {"tokens": "1e3"},  # an exponent belongs in a JSON number, not in a string
        {"tokens": "+5"},
        {"tokens": "\u0661\u0662"},  # Arabic-Indic digits are not decimal digits here
        {"tokens": "5."},
        {"tokens": [1]},
        {"tokens": {"n": 1}},
    ],
)
def test_sum_rejects_values_that_are_not_finite_numbers(data):
    rejected("llm.completion", data)


@pytest.mark.parametrize(
    "text",
    [b"18446744073709551617", b"1e18", b"-1000000000000000000", b"0.0000000001", b"0.30000000000000004",
     b"1e400", b"1" * 5000],
)  # fmt: skip
def test_numbers_beyond_the_exact_range_are_value_out_of_range_never_bent(text):
    error = rejected("storage.sampled", b'{"gb":' + text + b"}", ErrorClass.VALUE_OUT_OF_RANGE)
    # Beyond a double's range the JSON decoder rejects the whole record, still as out of range.
    assert "storage_gb" in error.message or "out of any range" in error.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [(b"999999999999999999", "999999999999999999"), (b"999999999999999999.999999999", "999999999999999999.999999999"),
     (b"12345678901234567.5", "12345678901234567.5"), (b"1e17", "100000000000000000"), (b"0.1", "0.1"),
     (b"1.50000000000", "1.5")],
)  # fmt: skip
def test_numbers_within_range_keep_every_digit(text, expected):
    (reading,) = readings("storage.sampled", b'{"gb":' + text + b"}")
    assert reading.value == Decimal(expected)


def test_negative_values_need_allow_negative():
    assert rejected("seats.updated", {"seats": -3}, ErrorClass.NEGATIVE_VALUE)
    assert rejected("llm.completion", {"tokens": "-0.5"}, ErrorClass.NEGATIVE_VALUE)
    (reading,) = readings("seats.updated", {"seats": 0}) and readings("seats.updated", b'{"seats":-0}')
    assert reading.value == 0
    lenient = MeterIndex(
        parse_catalog(
            {
                "meters": [
                    {
                        "key": "credit",
                        "event_type": "c",
                        "aggregation": "SUM",
                        "value_property": "$.v",
                        "allow_negative": True,
                    }
                ]
            }
        ).meters
    )
    (reading,) = readings("c", {"v": -3}, lenient)
    assert reading.value == Decimal(-3)


@given(st.decimals(min_value=-(10**18) + 1, max_value=10**18 - 1, places=9, allow_nan=False))
def test_every_value_in_range_comes_back_exactly_whichever_way_it_is_spelled(value):
    meter = parse_catalog(
        {
            "meters": [
                {"key": "v", "event_type": "t", "aggregation": "SUM", "value_property": "$.v", "allow_negative": True}
            ]
        }
    )
    index = MeterIndex(meter.meters)
    number = format(value, "f").encode()
    for data in (b'{"v":' + number + b"}", b'{"v":"' + number + b'"}'):
        (reading,) = readings("t", data, index)
        assert reading.value == value


# --- numeric_value ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, "0"),
        (42, "42"),
        (Decimal("0.1"), "0.1"),
        (Decimal("1.5E-7"), "0.00000015"),
        (Decimal("2.5E3"), "2500"),
        ("3.25", "3.25"),
        ("0.000000001", "0.000000001"),
        (10**17, "100000000000000000"),
    ],
)
def test_numeric_value_accepts_numbers_and_plain_decimal_strings(raw, expected):
    value = numeric_value(SUM_METER, raw)
    assert value == Decimal(expected)
    assert value.as_tuple().exponent == -9  # at the scale of Decimal(38, 9)


@given(st.integers(min_value=-(10**19), max_value=10**19) | st.integers(min_value=-3, max_value=3))
def test_a_whole_number_takes_the_fast_path_with_the_general_paths_verdict(number):
    """JSON integers skip the general checks: the verdict, the value and its scale must be the
    ones the same number gets spelled as a decimal string (which the general path judges)."""
    for meter in (SUM_METER, NEGATIVE_SUM_METER):
        try:
            expected = numeric_value(meter, str(number))
        except Rejection as rejection:
            with pytest.raises(Rejection) as info:
                numeric_value(meter, number)
            assert info.value.code == rejection.code
            continue
        value = numeric_value(meter, number)
        assert value == expected
        assert value.as_tuple() == expected.as_tuple()


NEGATIVE_SUM_METER = parse_catalog(
    {"meters": [{"key": "v", "event_type": "t", "aggregation": "SUM", "value_property": "$.v", "allow_negative": True}]}
).meters[0]


@pytest.mark.parametrize("raw", ["0.0000000005", "1.1234567894", Decimal("0.30000000000000004"), 10**18, "-1e18"])
def test_numeric_value_never_rounds(raw):
    with pytest.raises(Rejection) as info:
        numeric_value(SUM_METER, raw)
    assert info.value.code in (ErrorClass.VALUE_OUT_OF_RANGE, ErrorClass.INVALID_METER_VALUE)


def test_numeric_value_largest_representable_magnitude():
    # 18 integer digits, so that sums of 10^11 values still fit Decimal(38, 9).
    assert numeric_value(SUM_METER, "999999999999999999.999999999") == Decimal("999999999999999999.999999999")
    for raw in (10**18, "1000000000000000000", Decimal("1E+18")):
        with pytest.raises(Rejection) as info:
            numeric_value(SUM_METER, raw)
        assert info.value.code is ErrorClass.VALUE_OUT_OF_RANGE


@pytest.mark.parametrize(
    "raw", [MISSING, None, True, False, 0.5, math.nan, math.inf, -math.inf, [], [1], {}, {"v": 1}, b"1"]
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
    assert unique_value(UNIQUE_METER, 1) == unique_value(UNIQUE_METER, Decimal("1.0")) == "1"
    assert unique_value(UNIQUE_METER, Decimal("2.5")) == unique_value(UNIQUE_METER, Decimal("2.50")) == "2.5"
    assert unique_value(UNIQUE_METER, 7) != unique_value(UNIQUE_METER, 8)
    # Ids are not amounts: 20 digits are fine, and neighbours stay apart.
    assert unique_value(UNIQUE_METER, 18446744073709551617) != unique_value(UNIQUE_METER, 18446744073709551618)


def test_unique_numbers_through_the_index():
    a = readings("user.active", {"user": {"id": 1}})
    b = readings("user.active", {"user": {"id": 1.0}})
    assert a == b


@pytest.mark.parametrize("raw", [0, Decimal("0.0"), Decimal("-0"), Decimal("-0.0"), Decimal("0e5"), Decimal("-0E-3")])
def test_unique_value_every_spelling_of_zero_is_one_id(raw):
    # normalize() keeps the sign of -0: -0 and 0 would count as two users
    assert unique_value(UNIQUE_METER, raw) == "0"


@given(st.integers(-(10**47) + 1, 10**47 - 1), st.integers(0, 9), st.booleans())
def test_unique_value_is_one_plain_spelling_of_the_number(nanos, padding, minus):
    # Any number up to 38 integer and 9 fractional digits, spelled with trailing zeros and,
    # for zero, a minus sign: its text is the number (nothing rounded) in one canonical form.
    sign = "-" if minus and nanos == 0 else ""
    spelled = Decimal(f"{sign}{nanos}{'0' * padding}E-{9 + padding}")
    text = unique_value(UNIQUE_METER, spelled)
    assert Decimal(text) == spelled
    assert text == unique_value(UNIQUE_METER, Decimal(f"{nanos}E-9"))
    assert "E" not in text and text != "-0" and not ("." in text and text.endswith("0"))


def test_unique_zeros_through_the_index_are_one_id():
    spellings = [b'{"user":{"id":0}}', b'{"user":{"id":0.0}}', b'{"user":{"id":-0.0}}', b'{"user":{"id":-0E-3}}']
    assert {readings("user.active", text)[0].unique for text in spellings} == {"0"}


@pytest.mark.parametrize(("raw", "expected"), [(100, "100"), (Decimal("1000.0"), "1000"), (12300, "12300")])
def test_unique_value_numbers_render_in_plain_notation(raw, expected):
    assert unique_value(UNIQUE_METER, raw) == expected


@pytest.mark.parametrize("raw", [MISSING, None, "", True, False, math.nan, math.inf, [], {}, {"id": 1}])
def test_unique_value_rejects_the_rest(raw):
    with pytest.raises(Rejection) as info:
        unique_value(UNIQUE_METER, raw)
    assert info.value.code is ErrorClass.INVALID_METER_VALUE


@pytest.mark.parametrize("raw", [Decimal("1E+38"), Decimal("0.0000000001"), Decimal("NaN")])
def test_unique_value_numbers_out_of_range(raw):
    with pytest.raises(Rejection) as info:
        unique_value(UNIQUE_METER, raw)
    assert info.value.code is ErrorClass.VALUE_OUT_OF_RANGE


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


def _reference_readings(meters: list, data: object, exact_data: object) -> list[Reading]:
    """Every meter read by walking its steps, as MeterIndex did before its readers were
    specialised per meter (2026-12-06): the compiled readers must agree with it."""
    from bastionary.ingest.jsonpath import extract

    out = []
    for meter in meters:
        group = tuple(
            (name, dimension_value(extract(data, steps))) for name, steps in sorted(meter.group_steps.items())
        )
        if meter.aggregation is Aggregation.COUNT:
            out.append(Reading(meter.key, meter.aggregation, group))
            continue
        raw = extract(data, meter.value_steps)
        if isinstance(raw, (float, Decimal)):
            raw = extract(exact_data(), meter.value_steps)  # type: ignore[operator]
        if meter.aggregation is Aggregation.UNIQUE_COUNT:
            out.append(Reading(meter.key, meter.aggregation, group, None, unique_value(meter, raw)))
        else:
            out.append(Reading(meter.key, meter.aggregation, group, numeric_value(meter, raw)))
    return out


_LEAVES = (
    st.none()
    | st.booleans()
    # What the decoders give: 64-bit integers (wider ones are refused or decoded as floats),
    # and Decimals from the common shape's decode.
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.decimals(min_value=-(10**20), max_value=10**20, allow_nan=False, allow_infinity=False, places=3)
    | st.text(max_size=3)
)
_DATA = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "0"]), children),
    max_leaves=6,
)
_PATHS = st.sampled_from(["$.a", "$.b", "$.a.b", "$['a'][0]", "$[0]", "$.a[1].b"])
_METERS = st.lists(
    st.builds(
        lambda key, aggregation, value, dimensions, negative: {
            "key": f"m{key}",
            "event_type": "t",
            "aggregation": aggregation,
            **({} if aggregation == "COUNT" else {"value_property": value}),
            "group_by": dimensions,
            "allow_negative": negative,
        },
        st.integers(0, 99),
        st.sampled_from(["SUM", "COUNT", "MAX", "UNIQUE_COUNT", "LATEST"]),
        _PATHS,
        st.dictionaries(st.sampled_from(["x", "y"]), _PATHS, max_size=2),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda meter: meter["key"],
)


@given(meters=_METERS, data=_DATA)
def test_the_compiled_readers_read_as_walking_each_meter_s_steps(meters, data):
    catalog = parse_catalog({"meters": meters})
    event = ValidUsageEvent("e-1", "test", "t", "cust-1", datetime(2024, 5, 1, tzinfo=UTC), data, None, None, {})

    def outcome(read: object) -> object:
        try:
            return read()  # type: ignore[operator]
        except Rejection as refused:
            return (refused.code, refused.message)
        except Exception as error:  # whatever either raises, the other must raise too
            return (type(error).__name__, str(error))

    compiled = outcome(lambda: MeterIndex(catalog.meters).readings(event, lambda _index: data, 0))
    assert compiled == outcome(lambda: _reference_readings(list(catalog.meters), data, lambda: data))
