"""``schemas/README.md`` on usage events against the code: its record examples (structured,
batch and binary) are accepted by both the schemas and the worker, its tables of error classes,
aggregations and required attributes are the code's, and its meter value rules hold on the
examples it gives."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import orjson
import pytest

from bastionary.catalog import Aggregation, parse_catalog
from bastionary.ingest.cloudevents import REQUIRED_ATTRIBUTES
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.readings import MeterIndex
from tests.unit.schema_helpers import (
    EVENT_VALIDATOR,
    RECORD_VALIDATOR,
    binary_event,
    event,
    parse,
    readme_blocks,
    readme_section,
    readme_table_keys,
    schema_errors,
    worker_accepts,
)


def test_readme_record_examples_are_accepted():
    examples = readme_blocks("json")
    assert len(examples) >= 2
    for example in examples:
        value = json.loads(example)
        assert schema_errors(RECORD_VALIDATOR, value) == []
        assert worker_accepts(example.encode())


def test_readme_binary_example_is_accepted():
    (example,) = readme_blocks("text")
    headers = [(name, text.encode()) for name, text in re.findall(r"^(ce_\w+): (.+)$", example, flags=re.MULTILINE)]
    (value,) = re.findall(r"^value: (.+)$", example, flags=re.MULTILINE)
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time"} <= {h[0] for h in headers}
    assert worker_accepts(value.encode(), headers)
    assert schema_errors(EVENT_VALIDATOR, binary_event(value.encode(), headers)) == []


def test_readme_lists_every_error_class():
    # A code may appear twice: once where it rejects a whole record, once for one event.
    assert sorted(set(readme_table_keys("Error classes"))) == sorted(c.value for c in ErrorClass)


def test_readme_lists_every_aggregation():
    assert readme_table_keys("Meters") == [a.value for a in Aggregation]


def test_readme_lists_the_required_attributes():
    assert readme_table_keys("Required attributes") == list(REQUIRED_ATTRIBUTES)


# The README's meter value rules, on the examples it gives.
VALUE_METERS = MeterIndex(
    parse_catalog(
        {
            "meters": [
                {"key": "total", "event_type": "sum", "aggregation": "SUM", "value_property": "$.v"},
                {"key": "users", "event_type": "unique", "aggregation": "UNIQUE_COUNT", "value_property": "$.v"},
                {"key": "both_sum", "event_type": "both", "aggregation": "SUM", "value_property": "$.v"},
                {"key": "both_count", "event_type": "both", "aggregation": "COUNT"},
                {"key": "both_users", "event_type": "both", "aggregation": "UNIQUE_COUNT", "value_property": "$.u"},
            ]
        }
    ).meters
)


def readings(event_type: str, data: dict | bytes) -> list:
    """Through the parser, as the worker reads it: ``data`` as a dict, or as JSON text."""
    text = data if isinstance(data, bytes) else orjson.dumps(data)
    value = orjson.dumps(event(type=event_type, data={})).replace(b'"data":{}', b'"data":' + text)
    parsed = parse(value)
    if parsed.rejection is not None:
        raise parsed.rejection
    (member,) = parsed.members
    assert member.event is not None, member.rejection
    return VALUE_METERS.readings(member.event, parsed.exact_data, 0)


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b"17", "17"), (b'"17"', "17"), (b'"4.5"', "4.5"), (b"1e3", "1000"), (b"0.1", "0.1"),
     (b'"999999999999999999.999999999"', "999999999999999999.999999999"), (b"1.50", "1.5")],
)  # fmt: skip
def test_readme_number_rule(raw, value):
    (reading,) = readings("sum", b'{"v":' + raw + b"}")
    assert reading.value == Decimal(value)
    assert reading.value.as_tuple().exponent == -9


@pytest.mark.parametrize(
    "data",
    [{}, {"v": None}, {"v": True}, {"v": {}}, {"v": [1]}, {"v": ""}, {"v": "abc"}, {"v": "NaN"},
     {"v": "Infinity"}, {"v": " 8 "}, {"v": "1e3"}, {"v": "1_000"}, {"v": "+5"}, {"w": 1}],
)  # fmt: skip
def test_readme_non_numbers_are_invalid_meter_value(data):
    with pytest.raises(Rejection) as caught:
        readings("sum", data)
    assert caught.value.code is ErrorClass.INVALID_METER_VALUE


@pytest.mark.parametrize("raw", [b"1e18", b"0.0000000001", b"18446744073709551617", b'"0.30000000000000004"'])
def test_readme_out_of_range_numbers_are_never_rounded(raw):
    with pytest.raises(Rejection) as caught:
        readings("sum", b'{"v":' + raw + b"}")
    assert caught.value.code is ErrorClass.VALUE_OUT_OF_RANGE


def test_readme_negative_values_need_allow_negative():
    with pytest.raises(Rejection) as caught:
        readings("sum", {"v": -2})
    assert caught.value.code is ErrorClass.NEGATIVE_VALUE
    assert "`allow_negative: true`" in readme_section("Meters")


def test_readme_unique_count_values():
    assert {
        r.unique for v in (b"100", b"100.0", b"1e2", b'"100"') for r in readings("unique", b'{"v":' + v + b"}")
    } == {"100"}
    assert [r.unique for r in readings("unique", {"v": "100.0"})] == ["100.0"]
    for bad in ("", None, True, [], {}):
        with pytest.raises(Rejection):
            readings("unique", {"v": bad})


def test_readme_all_or_nothing():
    assert len(readings("both", {"v": 1, "u": "alice"})) == 3
    with pytest.raises(Rejection):  # the UNIQUE_COUNT meter cannot read it, so no meter counts it
        readings("both", {"v": 1})
    assert readings("no.meter.selects.this", {}) == []
