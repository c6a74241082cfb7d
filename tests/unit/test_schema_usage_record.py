"""The value of a ``usage.events`` record against ``parse_record``: the record schema in
structured and batch mode, the event schema in binary mode (attributes in ``ce_`` headers), and
the error classes the README names for what the worker rejects."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.ingest.cloudevents import RecordLimits, parse_record
from bastionary.ingest.errors import ErrorClass
from tests.unit.schema_helpers import (
    BASE_EVENT,
    BROKER_MS,
    EVENT_VALIDATOR,
    HYPOTHESIS,
    INVALID_EVENTS,
    MISSING,
    NOT_OBJECTS,
    RECORD_SCHEMA,
    RECORD_VALIDATOR,
    SKEW,
    VALID_EVENTS,
    WRONG_DATA,
    binary_event,
    event,
    parse,
    random_events,
    schema_errors,
    wire,
    worker_accepts,
)

# --- structured and batch mode: the record schema -------------------------------------


def record_values() -> list[object]:
    valid, invalid = VALID_EVENTS, INVALID_EVENTS
    out: list[object] = []
    out.extend(valid)
    out.extend(invalid)
    out.extend(NOT_OBJECTS)
    out.extend([[e] for e in valid[:10]])
    out.extend([[e] for e in invalid[::7]])
    out.append(valid[:25])
    out.append(valid)  # one big batch, all good
    out.extend([valid[0], bad] for bad in invalid[::5])  # one bad member spoils the record
    out.extend([bad, valid[1]] for bad in invalid[::11])
    out.extend([[valid[0], odd] for odd in NOT_OBJECTS])
    out.extend([[], [None], [1], ["x"], [[]], [{}], [valid[0], []]])
    return out


RECORD_VALUES = record_values()


def test_record_corpus_holds_both_verdicts():
    verdicts = [worker_accepts(orjson.dumps(v)) for v in RECORD_VALUES]
    assert sum(verdicts) > 40 and verdicts.count(False) > 150


@pytest.mark.parametrize("value", RECORD_VALUES, ids=lambda v: repr(v)[:80])
def test_record_schema_agrees_with_parse_record(value):
    expected = worker_accepts(orjson.dumps(value))
    errors = schema_errors(RECORD_VALIDATOR, wire(value))
    assert (not errors) == expected, f"worker accepts: {expected}; schema errors: {errors[:5]}"


@HYPOTHESIS
@given(st.lists(random_events(), max_size=4) | random_events())
def test_random_records_agree(value):
    expected = worker_accepts(orjson.dumps(value))
    errors = schema_errors(RECORD_VALIDATOR, wire(value))
    assert (not errors) == expected, errors[:5]


def test_record_schema_is_one_event_or_a_non_empty_array_of_them():
    event_ref = {"$ref": "usage-event.schema.json"}
    assert RECORD_SCHEMA["oneOf"] == [event_ref, {"type": "array", "minItems": 1, "items": event_ref}]


# --- binary mode: the event schema ----------------------------------------------------


def binary_record(candidate: dict, data: object = MISSING) -> tuple[bytes, list[tuple[str, bytes]]]:
    attrs = {k: v for k, v in candidate.items() if k != "data"}
    headers = [(f"ce_{k}", v.encode()) for k, v in attrs.items()]
    value = candidate.get("data", {}) if data is MISSING else data
    return orjson.dumps(value), headers


def _string_attributes(candidate: object) -> bool:
    return (
        isinstance(candidate, dict)
        and isinstance(candidate.get("specversion"), str)  # without it the record is structured
        and all(isinstance(v, str) for k, v in candidate.items() if k != "data")
    )


BINARY_CASES = [binary_record(e) for e in VALID_EVENTS + INVALID_EVENTS if _string_attributes(e)]
BINARY_CASES += [binary_record(BASE_EVENT, data) for data in WRONG_DATA + [[BASE_EVENT], {"any": ["thing"]}]]
BINARY_CASES += [binary_record(event(datacontenttype="application/json", partitionkey="cust-42"))]


def test_binary_corpus_holds_both_verdicts():
    verdicts = [worker_accepts(v, h) for v, h in BINARY_CASES]
    assert sum(verdicts) > 30 and verdicts.count(False) > 40


@pytest.mark.parametrize(("value", "headers"), BINARY_CASES, ids=lambda x: repr(x)[:60])
def test_binary_mode_agrees_with_the_event_schema(value, headers):
    expected = worker_accepts(value, headers)
    errors = schema_errors(EVENT_VALIDATOR, binary_event(value, headers))
    assert (not errors) == expected, f"worker accepts: {expected}; schema errors: {errors}"


def test_binary_mode_needs_the_specversion_header():
    """Without ce_specversion the ce_ headers are ignored and the value is read as structured."""
    value, headers = binary_record(BASE_EVENT)
    headers = [h for h in headers if h[0] != "ce_specversion"]
    assert not worker_accepts(value, headers)
    assert worker_accepts(orjson.dumps(BASE_EVENT), headers)


# --- error classes the README names ---------------------------------------------------


def _code(parsed) -> ErrorClass:
    if parsed.rejection is not None:
        return parsed.rejection.code
    (member,) = parsed.members
    return member.rejection.code


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, ErrorClass.INVALID_JSON),
        (b"", ErrorClass.INVALID_JSON),
        (b"{", ErrorClass.INVALID_JSON),
        (b'{"id": "\xff"}', ErrorClass.INVALID_ENCODING),
        (b"[]", ErrorClass.EMPTY_BATCH),
        (b"42", ErrorClass.NOT_CLOUDEVENT),
        (orjson.dumps(event(time=MISSING)), ErrorClass.NOT_CLOUDEVENT),
        (orjson.dumps(event(time="2024-05-01T12:00:00")), ErrorClass.INVALID_TIME),
        (orjson.dumps(event(time="2024-05-01T12:00:00", id=MISSING)), ErrorClass.NOT_CLOUDEVENT),
        (orjson.dumps(event(time="2100-01-01T00:05:01Z")), ErrorClass.FUTURE_TIME),
        (orjson.dumps(event(time="2100-01-01T00:05:00Z")), None),
    ],
)
def test_error_classes_as_documented(value, code):
    parsed = parse(value)
    if code is None:
        assert worker_accepts(value)
    else:
        assert _code(parsed) is code


def test_record_over_the_limit_is_record_too_large():
    value = orjson.dumps(BASE_EVENT)
    parsed = parse_record(value, None, BROKER_MS, RecordLimits(len(value) - 1, 10_000, SKEW))
    assert parsed.rejection.code is ErrorClass.RECORD_TOO_LARGE
    assert worker_accepts(value)
