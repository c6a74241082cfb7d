"""The forty-fifth review of the usage contract: hostile numbers, offsets and nesting.

Each test failed on the code before its fix (the review kept the scripts that showed it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.catalog import parse_catalog
from bastionary.ingest.cloudevents import MAX_NESTING_DEPTH, RecordLimits, parse_record
from bastionary.ingest.errors import ErrorClass
from bastionary.metering.examine import examine
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord

METERS = MeterIndex(
    parse_catalog(
        {
            "meters": [
                {"key": "tokens", "event_type": "llm.completion", "aggregation": "SUM", "value_property": "$.tokens"},
                {"key": "users", "event_type": "user.active", "aggregation": "UNIQUE_COUNT", "value_property": "$.id"},
            ]
        }
    ).meters
)
LIMITS = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))
RECORD_MS = int(datetime(2024, 5, 2, tzinfo=UTC).timestamp() * 1000)


def event_json(
    ident: str, data: str = '{"tokens": 2}', time: str = "2024-05-01T12:00:00Z", kind: str = "llm.completion"
) -> bytes:
    """One event as JSON text, so that numbers keep the spelling the test gives them."""
    return (
        f'{{"specversion": "1.0", "id": "{ident}", "source": "//test", "type": "{kind}", "subject": "cust-1",'
        f' "time": "{time}", "data": {data}}}'
    ).encode()


def examined(value: bytes):
    return examine(InboundRecord("usage.events", 0, 7, RECORD_MS, b"cust-1", value, []), 1, METERS, LIMITS)


# --- a number whose exponent is past what Decimal holds ------------------------------------


@pytest.mark.parametrize("number", ["0e-9999999999999999999", "1e-9999999999999999999", "-0.5E-99999999999999999999"])
@pytest.mark.parametrize("kind", ["llm.completion", "user.active"])
def test_a_number_past_decimals_exponent_costs_its_member_not_the_batch(number, kind):
    """orjson reads such a number as 0.0, the exact decode raised decimal.InvalidOperation, and
    the worker dead-lettered the whole record as internal_error: the good member with it."""
    field = "tokens" if kind == "llm.completion" else "id"
    hostile = event_json("e-2", f'{{"{field}": {number}}}', kind=kind)
    result = examined(b"[" + event_json("e-1") + b"," + hostile + b"]")
    assert result.failure is None
    assert [accepted.index for accepted in result.accepted] == [0]
    assert [(index, rejection.code) for index, rejection in result.rejected] == [(1, ErrorClass.VALUE_OUT_OF_RANGE)]
    alone = examined(hostile)
    assert alone.failure is None
    assert [(index, rejection.code) for index, rejection in alone.rejected] == [(0, ErrorClass.VALUE_OUT_OF_RANGE)]


_MANTISSAS = st.sampled_from(["0", "1", "-0", "12.5", "0.000", "-3.25"])
_EXPONENTS = st.integers(-(10**25), 10**25) | st.integers(-30, 30)


@settings(max_examples=300, deadline=None)
@given(mantissa=_MANTISSAS, exponent=_EXPONENTS, in_value=st.booleans())
def test_no_number_spelling_makes_a_record_an_internal_error(mantissa, exponent, in_value):
    """Whatever a number's exponent, a record ends as events or dead letters with a class of the
    contract, and a good sibling counts unless the record itself is refused."""
    number = f"{mantissa}e{exponent}"
    data = f'{{"tokens": {number}}}' if in_value else f'{{"tokens": 1.5, "other": {number}}}'
    result = examined(b"[" + event_json("e-1") + b"," + event_json("e-2", data) + b"]")
    assert result.failure is None
    if result.rejection is None:
        assert result.accepted[0].index == 0


# --- an offset's minutes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "time", ["2024-05-01T12:00:00+00:99", "2024-05-01T12:00:00+01:60", "2024-05-01T12:00:00.250-05:75"]
)
def test_an_offset_with_minutes_past_59_is_invalid_time(time):
    """Python's fromisoformat read +00:99 as +01:39 and the fast path took it: the event moved by
    99 minutes (across a billing period's end, perhaps) where RFC 3339 and pydantic refuse it."""
    parsed = parse_record(event_json("e-1", time=time), None, RECORD_MS, LIMITS)
    (member,) = parsed.members
    assert member.event is None
    assert member.rejection is not None and member.rejection.code is ErrorClass.INVALID_TIME


@settings(max_examples=400, deadline=None)
@given(sign=st.sampled_from("+-"), hours=st.integers(0, 23), minutes=st.integers(0, 99), batch=st.booleans())
def test_an_offset_is_read_as_rfc_3339_writes_it(sign, hours, minutes, batch):
    """Every offset hh:mm with minutes 00..59 is read as exactly that offset; any other is
    invalid_time, single event or batch member alike."""
    time = f"2024-05-01T00:00:00{sign}{hours:02d}:{minutes:02d}"
    value = event_json("e-1", time=time)
    parsed = parse_record(b"[" + value + b"]" if batch else value, None, RECORD_MS, LIMITS)
    (member,) = parsed.members
    if minutes >= 60:
        assert member.rejection is not None and member.rejection.code is ErrorClass.INVALID_TIME
        return
    assert member.event is not None, member.rejection
    offset = timedelta(hours=hours, minutes=minutes) * (-1 if sign == "-" else 1)
    assert member.event.time.utcoffset() == offset
    assert member.event.time == datetime(2024, 5, 1, tzinfo=UTC) - offset


# --- the record's nesting limit, named -----------------------------------------------------


def test_a_record_nested_past_1024_levels_names_that_limit():
    """The record-level refusal said "more than 254 levels", the one-event limit: a producer
    would look for 254 levels in a record that only passed 1,024."""
    deep = "[" * 1100 + "]" * 1100
    parsed = parse_record(event_json("e-1", f'{{"tokens": 1, "deep": {deep}}}'), None, RECORD_MS, LIMITS)
    assert parsed.rejection is not None
    assert parsed.rejection.code is ErrorClass.NESTING_TOO_DEEP
    assert "1024" in parsed.rejection.message
    assert str(MAX_NESTING_DEPTH) not in parsed.rejection.message
    # One event past 254 levels is still refused alone, with the event's limit.
    (member,) = parse_record(
        event_json(
            "e-1", orjson.dumps({"tokens": 1, "deep": [[[]]]}).decode().replace("[[[]]]", "[" * 300 + "]" * 300)
        ),
        None,
        RECORD_MS,
        LIMITS,
    ).members
    assert member.rejection is not None and member.rejection.code is ErrorClass.NESTING_TOO_DEEP
    assert str(MAX_NESTING_DEPTH) in member.rejection.message
