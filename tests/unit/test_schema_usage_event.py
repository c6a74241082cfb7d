"""``usage-event.schema.json`` against ``UsageEvent``, the worker's model of one usage event:
the same attributes and bounds, and the same verdict on every event of the corpus, on random
events and on every spelling of ``time`` (except the few listed here, on which they differ on
purpose and which the README lists)."""

from __future__ import annotations

import typing

import annotated_types
import pytest
from hypothesis import given
from jsonschema import Draft202012Validator

from bastionary.ingest.cloudevents import REQUIRED_ATTRIBUTES, UsageEvent
from tests.unit.schema_helpers import (
    EVENT_SCHEMA,
    EVENT_VALIDATOR,
    HYPOTHESIS,
    INVALID_EVENTS,
    NOT_OBJECTS,
    STRING_ATTRIBUTES,
    VALID_EVENTS,
    event,
    random_events,
    rfc3339_times,
    schema_errors,
)


def model_accepts(event: object) -> bool:
    try:
        UsageEvent.model_validate(event)
    except ValueError:  # pydantic.ValidationError
        return False
    return True


# Accepted by the worker (pydantic's lax datetime parsing), rejected by the schema. The
# contract is the schema; the README lists these as not to be relied upon.
WORKER_ONLY_TIMES = [
    "2024-05-01T12:00Z",  # no seconds
    "2024-05-01T12:00:00+0200",  # offset without a colon
    "2024-05-01 12:00:00Z",  # space for T
    "2024-05-01T12:00:00,5Z",  # comma as the decimal sign
]

# Valid RFC 3339, rejected by the worker.
SCHEMA_ONLY_TIMES = [
    "2016-12-31T23:59:60Z",  # leap second
]


def test_corpora_are_sizeable():
    assert len(VALID_EVENTS) > 40
    assert len(INVALID_EVENTS) > 120


# --- structure ------------------------------------------------------------------------


def test_event_required_attributes_match_the_model():
    model_required = [name for name, f in UsageEvent.model_fields.items() if f.is_required()]
    assert EVENT_SCHEMA["required"] == model_required == list(REQUIRED_ATTRIBUTES)


def test_event_properties_match_the_model_fields():
    assert list(EVENT_SCHEMA["properties"]) == list(UsageEvent.model_fields)


def test_event_extension_attributes_are_allowed_in_both():
    assert UsageEvent.model_config["extra"] == "allow"
    assert EVENT_SCHEMA["additionalProperties"] is True


def test_event_specversion_matches_the_literal():
    assert typing.get_args(UsageEvent.model_fields["specversion"].annotation) == (
        EVENT_SCHEMA["properties"]["specversion"]["const"],
    )


@pytest.mark.parametrize("attribute", STRING_ATTRIBUTES)
def test_event_string_bounds_match_the_model(attribute):
    field = UsageEvent.model_fields[attribute]
    bounds = {type(m): m for m in field.metadata}
    prop = EVENT_SCHEMA["properties"][attribute]
    assert prop["type"] == "string"
    assert any(getattr(m, "strict", False) for m in field.metadata)  # StrictStr: no coercion, as in JSON Schema
    assert prop["minLength"] == bounds[annotated_types.MinLen].min_length
    assert prop["maxLength"] == bounds[annotated_types.MaxLen].max_length


# --- behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("candidate", VALID_EVENTS + INVALID_EVENTS + NOT_OBJECTS, ids=lambda v: repr(v)[:80])
def test_event_schema_agrees_with_the_model(candidate):
    expected = model_accepts(candidate)
    errors = schema_errors(EVENT_VALIDATOR, candidate)
    assert (not errors) == expected, f"model accepts: {expected}; schema errors: {errors}"
    assert expected == (candidate in VALID_EVENTS)


@pytest.mark.parametrize("time", WORKER_ONLY_TIMES, ids=repr)
def test_times_only_the_worker_accepts(time):
    """pydantic's leniency, documented in the README; if this fails, update the README list."""
    candidate = event(time=time)
    assert not EVENT_VALIDATOR.is_valid(candidate)
    assert model_accepts(candidate), f"the worker now rejects {time!r}: drop it from the README and this list"


@pytest.mark.parametrize("time", SCHEMA_ONLY_TIMES, ids=repr)
def test_times_only_the_schema_accepts(time):
    candidate = event(time=time)
    assert EVENT_VALIDATOR.is_valid(candidate)
    assert not model_accepts(candidate), f"the worker now accepts {time!r}: drop it from the README and this list"


def test_time_pattern_alone_requires_an_offset():
    """Validators that treat `format` as an annotation still reject a time without an offset."""
    annotation_only = Draft202012Validator(EVENT_SCHEMA)  # no format checker
    assert annotation_only.is_valid(event(time="2024-05-01T12:00:00+02:00"))
    assert not annotation_only.is_valid(event(time="2024-05-01T12:00:00"))
    assert not annotation_only.is_valid(event(time="2024-05-01T12:00:00.5"))


# Random events: each attribute absent, well-formed, or any JSON value at all.
@HYPOTHESIS
@given(random_events())
def test_random_events_agree(candidate):
    errors = schema_errors(EVENT_VALIDATOR, candidate)
    assert (not errors) == model_accepts(candidate), errors


@HYPOTHESIS
@given(rfc3339_times())
def test_generated_rfc3339_times_are_accepted_by_both(time):
    candidate = event(time=time)
    assert EVENT_VALIDATOR.is_valid(candidate)
    assert model_accepts(candidate)
