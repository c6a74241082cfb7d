"""The JSON Schemas in ``schemas/`` against the code they describe, so the two cannot drift.

Every behavioural test here feeds the same input to a schema and to the code (``UsageEvent``,
``parse_record``, ``parse_catalog``) and requires the same verdict. The few inputs on which
the two differ on purpose are listed below (``*_ONLY`` constants and ``*_only_*`` tests) and in the README
section "Where the schemas and the code differ"; they are excluded from the agreement
corpora and checked on their own, so a change on either side shows up here.
"""

from __future__ import annotations

import itertools
import json
import re
import string
import typing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import annotated_types
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from bastionary.catalog import Aggregation, Catalog, CatalogError, Meter, parse_catalog
from bastionary.dunning import dunner as dunning_dunner
from bastionary.dunning import engine as dunning_engine
from bastionary.dunning import events as dunning_events
from bastionary.dunning import policy as dunning_policy
from bastionary.entitlements import spec as entitlement_spec
from bastionary.ingest.cloudevents import REQUIRED_ATTRIBUTES, RecordLimits, UsageEvent, parse_record
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.ingest.jsonpath import JsonPathError, compile_path
from bastionary.metering.readings import MeterIndex
from bastionary.rating import plans as rating_plans
from bastionary.rating.events import InvalidBillingEvent
from bastionary.rating.money import MINOR_UNITS
from bastionary.rating.periods import Interval
from bastionary.settings import parse_iso_duration

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
README = SCHEMAS / "README.md"
DEFAULT_CATALOG = ROOT / "src" / "bastionary" / "default_catalog.yaml"

# Records are judged against a broker timestamp far after every event time used here, so
# `future_time` never fires by accident; the size limit is far above every record's size.
BROKER_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
SKEW = timedelta(minutes=5)
MAX_BYTES = 64 * 1024 * 1024


# --- validators ------------------------------------------------------------------------

# RFC 3339 section 5.6 `date-time`, with the section 5.6 note's lower-case t/z. jsonschema
# checks `date-time` only when the optional rfc3339-validator package is installed, so the
# check is spelled out here, where it cannot silently switch itself off.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))",
    re.ASCII,
)


def is_rfc3339_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats constrain strings only; `type` handles the rest
    match = _RFC3339.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    if not (1 <= month <= 12 and 1 <= day <= days[month - 1]):
        return False
    if hour > 23 or minute > 59 or second > 60:  # 60: RFC 3339 admits leap seconds
        return False
    off_hour, off_minute = match.group(7), match.group(8)
    return off_hour is None or (int(off_hour) <= 23 and int(off_minute) <= 59)


FORMAT_CHECKER = FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(is_rfc3339_date_time)


def load_schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


SCHEMA_FILES = (
    "usage-event.schema.json",
    "usage-record.schema.json",
    "catalog.schema.json",
    "dunning-notice.schema.json",
    "payment-event.schema.json",
    "dunning-response.schema.json",
)
EVENT_SCHEMA = load_schema("usage-event.schema.json")
RECORD_SCHEMA = load_schema("usage-record.schema.json")
CATALOG_SCHEMA = load_schema("catalog.schema.json")
# The schemas have no $id: usage-record's "$ref": "usage-event.schema.json" resolves against
# wherever the files are read from, so the registry holds them under their file names.
REGISTRY = Registry().with_resources((name, Resource.from_contents(load_schema(name))) for name in SCHEMA_FILES)


def validator(schema: dict) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=REGISTRY, format_checker=FORMAT_CHECKER)


EVENT_VALIDATOR = validator(EVENT_SCHEMA)
RECORD_VALIDATOR = validator(RECORD_SCHEMA)
CATALOG_VALIDATOR = validator(CATALOG_SCHEMA)


# --- the verdicts being compared -------------------------------------------------------


def model_accepts(event: object) -> bool:
    try:
        UsageEvent.model_validate(event)
    except ValueError:  # pydantic.ValidationError
        return False
    return True


def parse(value: bytes | None, headers: list[tuple[str, bytes]] | None = None):
    return parse_record(value, headers, BROKER_MS, RecordLimits(MAX_BYTES, 10_000, SKEW))


def worker_accepts(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> bool:
    """True when the worker takes every event of the record (nothing dead-lettered)."""
    parsed = parse(value, headers)
    return parsed.rejection is None and all(m.event is not None for m in parsed.members)


def catalog_accepted(document: object) -> bool:
    try:
        parse_catalog(document)
    except CatalogError:
        return False
    return True


def schema_errors(validator: Draft202012Validator, instance: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(instance)]


def wire(value: object) -> object:
    """The value as the worker sees it after a JSON round trip."""
    return orjson.loads(orjson.dumps(value))


# --- event corpus ----------------------------------------------------------------------

MISSING = object()

BASE_EVENT = {
    "specversion": "1.0",
    "id": "evt-0001",
    "source": "//api.example/llm",
    "type": "llm.completion",
    "subject": "cust-42",
    "time": "2024-05-01T12:00:00Z",
    "data": {"tokens": 17, "model": "small"},
}


def event(**overrides: object) -> dict:
    merged = {**BASE_EVENT, **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


# Accepted by both: RFC 3339 date-times that pydantic's AwareDatetime parses.
BOTH_ACCEPT_TIMES = [
    "2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00z",
    "2024-05-01t12:00:00Z",
    "2024-05-01T12:00:00.5Z",
    "2024-05-01T12:00:00.123456Z",
    "2024-05-01T12:00:00.123456789Z",  # digits past the microsecond are dropped by the worker
    "2024-05-01T12:00:00+02:00",
    "2024-05-01T12:00:00-07:30",
    "2024-05-01T12:00:00-00:00",
    "2024-05-01T12:00:00+23:59",
    "2024-02-29T23:59:59Z",
    "2000-02-29T00:00:00+01:00",
    "1999-12-31T23:59:59.999999-01:00",
    "1970-01-01T00:00:00Z",
    "2099-12-31T23:59:59Z",
]

# Rejected by both.
BOTH_REJECT_TIMES = [
    "0000-01-01T00:00:00Z",  # valid RFC 3339, outside the storable 1970 .. 2105 range
    "1969-07-20T20:17:40Z",
    "2024-05-01T12:00:00",  # no offset
    "2024-05-01T12:00:00.5",
    "2024-05-01",
    "12:00:00Z",
    "2024-02-30T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-00-10T00:00:00Z",
    "2024-05-00T00:00:00Z",
    "2024-05-32T00:00:00Z",
    "2024-05-01T24:00:00Z",
    "2024-05-01T12:60:00Z",
    "2024-05-01T12:00:61Z",
    "2024-05-01T12:00:00+24:00",
    "2024-05-01T12:00:00+00",
    "2024-05-01T12:00:00.Z",
    "2024-05-01T12:00:00.5+00:00Z",
    "2024-05-01T12:00:00+00:00:00",
    "2024-1-01T00:00:00Z",
    "+2024-05-01T12:00:00Z",
    "20240501T120000Z",
    " 2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00Z ",
    "2024-05-01T12:00:00Z\n",
    "2024-05-01T12:00:00+02:00[Europe/Paris]",
    "2024-W18-3T12:00:00Z",
    "",
    "yesterday",
    "now",
    "nan",
    "inf",
    "1e5",
    1714564800,  # Unix times: pydantic would read them, UsageEvent refuses them
    1714564800.5,
    0,
    -1,
    "1714564800",
    "0",
    "-1",
    None,
    True,
    False,
    [],
    {},
    ["2024-05-01T12:00:00Z"],
    {"seconds": 0},
]

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

STRING_ATTRIBUTES = ("id", "source", "type", "subject")
WRONG_FOR_STRING = [None, 0, 1, 1.5, -2, True, False, [], ["x"], {}, {"a": "b"}, ""]
WRONG_SPECVERSION = ["1", "0.3", "1.0 ", " 1.0", "1.00", "v1.0", "", 1.0, 1, None, True, ["1.0"], {}]
WRONG_DATA = [[], [{}], "x", "{}", "", 0, 1.5, True, None]
WRONG_OPTIONAL_STRING = [0, 1.5, True, [], ["x"], {}, {"a": 1}]


def max_length(attribute: str) -> int:
    return EVENT_SCHEMA["properties"][attribute]["maxLength"]


def valid_events() -> list[dict]:
    out = [
        event(),
        event(data=MISSING),
        event(data={}),
        event(data={"nested": {"a": [1, 2, {"b": None}]}, "n": 1.5, "s": "x", "t": True, "z": None}),
        event(datacontenttype="application/json"),
        event(datacontenttype=None, dataschema=None),
        event(dataschema="https://schemas.example/llm/v1"),
        event(datacontenttype="", dataschema=""),
        event(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", partitionkey="k"),
        event(ext_number=1, ext_null=None, ext_list=[1, "a"], ext_object={"a": {"b": 1}}, ext_bool=False),
        event(id="1", source="s", type="t", subject="c"),
        event(subject="Kunde-Müller", source="urn:ünïcödé", id="идентификатор", type="使用.事件"),
        event(data={"tokens": "17.5", "model": None}),
    ]
    for attribute in STRING_ATTRIBUTES:
        limit = max_length(attribute)
        out.append(event(**{attribute: "x" * limit}))
        out.append(event(**{attribute: "é" * limit}))  # two UTF-8 bytes, one code point
        out.append(event(**{attribute: "😀" * limit}))  # astral: one code point, two UTF-16 units
        out.append(event(**{attribute: " "}))  # whitespace is a non-empty string
    out.extend(event(time=t) for t in BOTH_ACCEPT_TIMES)
    return out


def invalid_events() -> list[dict]:
    out = []
    for attribute in REQUIRED_ATTRIBUTES:
        out.append(event(**{attribute: MISSING}))
    for attribute in STRING_ATTRIBUTES:
        out.extend(event(**{attribute: wrong}) for wrong in WRONG_FOR_STRING)
        out.append(event(**{attribute: "x" * (max_length(attribute) + 1)}))
        out.append(event(**{attribute: "😀" * (max_length(attribute) + 1)}))
    out.extend(event(specversion=wrong) for wrong in WRONG_SPECVERSION)
    out.extend(event(data=wrong) for wrong in WRONG_DATA)
    for attribute in ("datacontenttype", "dataschema"):
        out.extend(event(**{attribute: wrong}) for wrong in WRONG_OPTIONAL_STRING)
    out.extend(event(time=t) for t in BOTH_REJECT_TIMES)
    # two problems at once
    out.append(event(id=MISSING, time="2024-05-01"))
    out.append(event(subject=1, data=[]))
    out.append({})
    out.append({"data": {"tokens": 1}})
    return out


VALID_EVENTS = valid_events()
INVALID_EVENTS = invalid_events()
NOT_OBJECTS = [None, True, 0, 1.5, "event", [], [BASE_EVENT], [[BASE_EVENT]]]


def test_corpora_are_sizeable():
    assert len(VALID_EVENTS) > 40
    assert len(INVALID_EVENTS) > 120


# --- the schemas themselves ------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_json_file_in_schemas_is_checked_here():
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_FILES)


# --- usage event: structure ------------------------------------------------------------


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


# --- usage event: behaviour ------------------------------------------------------------


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
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def rfc3339_times(draw) -> str:
    # A day inside the storable range (1970 .. 2105 UTC) on either side, whatever the offset.
    moment = draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 31, 23, 59, 59)))
    digits = draw(st.integers(0, 9))
    fraction = ("." + f"{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]) if digits else ""
    offset_minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    if offset_minutes == 0 and draw(st.booleans()):
        offset = draw(st.sampled_from(["Z", "z"]))
    else:
        sign = "-" if offset_minutes < 0 or (offset_minutes == 0 and draw(st.booleans())) else "+"
        offset = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    separator = draw(st.sampled_from(["T", "t"]))
    return moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S") + fraction + offset


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


times = (
    rfc3339_times()
    | st.sampled_from(BOTH_ACCEPT_TIMES + BOTH_REJECT_TIMES)
    # any text but numbers (numeric strings, which pydantic would read as Unix times, are
    # covered by BOTH_REJECT_TIMES; the other lax forms by WORKER_ONLY_TIMES)
    | st.text(max_size=30).filter(_not_a_number)
    | st.none()
    | st.booleans()
    | st.lists(json_scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), json_scalars, max_size=2)
)


def attribute(well_formed: st.SearchStrategy) -> st.SearchStrategy:
    return st.just(MISSING) | well_formed | json_values


@st.composite
def random_events(draw) -> dict:
    candidate = {
        "specversion": draw(attribute(st.just("1.0"))),
        "id": draw(attribute(st.text(min_size=1, max_size=10))),
        "source": draw(attribute(st.text(min_size=1, max_size=10))),
        "type": draw(attribute(st.text(min_size=1, max_size=10))),
        "subject": draw(attribute(st.text(min_size=1, max_size=10))),
        "time": draw(st.just(MISSING) | times),
        "data": draw(attribute(st.dictionaries(st.text(max_size=5), json_values, max_size=4))),
        "datacontenttype": draw(st.just(MISSING) | st.none() | st.text(max_size=20) | json_values),
        "dataschema": draw(st.just(MISSING) | st.none() | st.text(max_size=20) | json_values),
    }
    extensions = draw(st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), json_values, max_size=2))
    candidate.update({k: v for k, v in extensions.items() if k not in candidate})
    return {k: v for k, v in candidate.items() if v is not MISSING}


HYPOTHESIS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


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


# --- usage.events record value: structured and batch mode ------------------------------


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


# --- binary mode ------------------------------------------------------------------------


def binary_record(candidate: dict, data: object = MISSING) -> tuple[bytes, list[tuple[str, bytes]]]:
    attrs = {k: v for k, v in candidate.items() if k != "data"}
    headers = [(f"ce_{k}", v.encode()) for k, v in attrs.items()]
    value = candidate.get("data", {}) if data is MISSING else data
    return orjson.dumps(value), headers


def binary_event(value: bytes, headers: list[tuple[str, bytes]]) -> dict:
    """The event binary mode describes: every ce_ header an attribute, the value its data."""
    return {**{k[3:]: v.decode() for k, v in headers if k.startswith("ce_")}, "data": orjson.loads(value)}


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


# --- error classes the README names --------------------------------------------------


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


# --- catalog: structure ----------------------------------------------------------------

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


# --- catalog: behaviour ----------------------------------------------------------------


def meter(**overrides: object) -> dict:
    base = {"key": "llm_tokens", "event_type": "llm.completion", "aggregation": "SUM", "value_property": "$.tokens"}
    merged = {**base, **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


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


# --- catalog: plans --------------------------------------------------------------------

PLAN_SCHEMA = CATALOG_SCHEMA["$defs"]["plan"]
PRICE_DEFS = {
    rating_plans.FlatPrice: "flat_price",
    rating_plans.PerUnitPrice: "per_unit_price",
    rating_plans.GraduatedPrice: "tiered_price",
    rating_plans.VolumePrice: "tiered_price",
    rating_plans.PackagePrice: "package_price",
    rating_plans.PercentagePrice: "percentage_price",
}


def _pattern(model: type, field: str) -> str:
    return next(m.pattern for m in model.model_fields[field].metadata if getattr(m, "pattern", None))


def test_plan_properties_and_required_match_the_model():
    model = rating_plans.Plan
    assert list(PLAN_SCHEMA["properties"]) == list(model.model_fields)
    assert PLAN_SCHEMA["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and PLAN_SCHEMA["additionalProperties"] is False
    assert PLAN_SCHEMA["properties"]["key"]["pattern"] == _pattern(model, "key")


def test_currency_enum_is_every_currency_with_a_known_minor_unit():
    assert PLAN_SCHEMA["properties"]["currency"]["enum"] == list(MINOR_UNITS)
    for currency in MINOR_UNITS:
        assert catalog_accepted({"plans": [{"key": "p", "currency": currency}]})


@pytest.mark.parametrize("model", list(PRICE_DEFS), ids=lambda m: m.__name__)
def test_price_definitions_match_the_models(model):
    schema = CATALOG_SCHEMA["$defs"][PRICE_DEFS[model]]
    assert list(schema["properties"]) == list(model.model_fields)
    assert schema["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and schema["additionalProperties"] is False
    assert CATALOG_SCHEMA["$defs"]["price_key"]["pattern"] == _pattern(model, "key")
    tag = typing.get_args(model.model_fields["model"].annotation)[0]
    assert schema["properties"]["model"] in ({"const": tag}, {"enum": ["graduated", "volume"]})


def test_price_models_match_the_discriminator():
    tags = [typing.get_args(m.model_fields["model"].annotation)[0] for m in PRICE_DEFS]
    assert CATALOG_SCHEMA["$defs"]["price"]["properties"]["model"]["enum"] == tags
    branches = CATALOG_SCHEMA["$defs"]["price"]["allOf"]
    assert [b["if"]["properties"]["model"]["const"] for b in branches] == tags
    assert [b["then"]["$ref"] for b in branches] == [f"#/$defs/{PRICE_DEFS[m]}" for m in PRICE_DEFS]


def test_tier_matches_the_model():
    schema = CATALOG_SCHEMA["$defs"]["tier"]
    assert list(schema["properties"]) == list(rating_plans.Tier.model_fields)
    assert schema["required"] == ["up_to"] and schema["additionalProperties"] is False


PLAN_METERS = [
    meter(group_by={"model": "$.model"}),
    meter(key="api_requests", event_type="api.request", aggregation="COUNT", value_property=MISSING),
]
PRICES = {
    "flat": {"key": "base", "model": "flat", "amount": 49, "description": "Platform fee"},
    "per_unit": {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.000002", "filter": {"model": "small"}},
    "graduated": {
        "key": "requests", "model": "graduated", "meter": "api_requests",
        "tiers": [{"up_to": 1000, "unit_amount": 0}, {"up_to": None, "unit_amount": "0.001", "flat_amount": 5}],
    },
    "volume": {"key": "bulk_tokens", "model": "volume", "meter": "llm_tokens", "tiers": [{"up_to": "1e6", "unit_amount": "0.000003"}, {"up_to": None, "unit_amount": "0.000002"}]},
    "package": {"key": "per_1k", "model": "package", "meter": "api_requests", "package_size": 1000, "package_amount": 2},
    "percentage": {"key": "fee", "model": "percentage", "meter": "llm_tokens", "rate": "0.029", "fixed_amount": "0.30", "min_amount": 1, "max_amount": 100},
}  # fmt: skip


def plan(**overrides: object) -> dict:
    base = {
        "key": "pro", "currency": "USD", "billing_interval": "P1M", "payment_terms": "P14D",
        "minimum_commitment": 100, "prices": list(PRICES.values()), "entitlements": [],
    }  # fmt: skip
    merged = {**base, **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


def price(kind: str, /, **overrides: object) -> dict:
    merged = {**PRICES[kind], **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


def plan_catalog(*plans: dict) -> dict:
    return {"meters": PLAN_METERS, "plans": list(plans)}


def with_price(kind: str, /, **overrides: object) -> dict:
    return plan_catalog(plan(prices=[price(kind, **overrides)]))


# Amount-like values on which the schema and pydantic's Decimal agree (numbers, and decimal
# strings written plainly; the code's extra leniency is listed in PLAN_CODE_ONLY_ACCEPTS).
MONEY_VALUES = [0, 1, 49, 2.5, 10**12, "0", "0.000002", "19.99", "+1", ".5", "5.", "1e3", "2.5E-4",
                -1, -0.01, "-1", "-0.5", "", " ", "x", "1,5", "0x10", "NaN", "Infinity", "-inf", True, False, [], {}]  # fmt: skip
POSITIVE_VALUES = [
    1,
    0.5,
    1000,
    "1",
    "0.001",
    "1e3",
    "+2",
    ".5",
    0,
    0.0,
    -1,
    "0",
    "0.000",
    "0e3",
    "-1",
    "",
    "x",
    "inf",
    True,
    [],
]
RATE_VALUES = [0, 1, 0.029, 0.5, "0", "1", "1.0", "1.", "0.029", ".5", "+0.5", "00.5", 1.01, 2, -0.1, "1.01", "2",
               "10", "-0.1", "", ".", "x", "NaN", True, None, []]  # fmt: skip
INTERVALS = ["P1M", "P3M", "P12M", "P1Y", "P1Y6M", "P2Y", "PT1M", "PT1H", "PT90S", "PT0.5S", "P7D", "P1W", "P1W2D",
             "P1DT12H", "P10D", "P0D", "PT0S", "P0W", "P0DT0H", "P", "PT", "P1", "1M", "P1M1D", "P1Y1W", "P1MT1H",
             "P1.5M", "P1.5D", "-P1M", "P-1M", "P1DT", "PT1D", "month", "", None, 1, 30]  # fmt: skip
TERMS = ["P14D", "P0D", "P30D", "PT0S", "P2W", "PT36H", "PT1.5S", "P1DT12H", "P1M", "P1Y", "P", "PT", "P1DT",
         "14", "P-1D", "", None, 14]  # fmt: skip
TIERS = [
    [{"up_to": None}],
    [{"up_to": 10, "unit_amount": 1, "flat_amount": 0}, {"up_to": 100}, {"up_to": None, "flat_amount": "2.5"}],
    [{"up_to": "10"}, {"up_to": "10.5"}, {"up_to": None}],
    [], None, {}, "tiers", [None], [1], [[]],
    [{"up_to": 10}],  # no unbounded tier
    [{"up_to": None}, {"up_to": None}],  # two
    [{"up_to": 0}, {"up_to": None}],
    [{"up_to": -5}, {"up_to": None}],
    [{"up_to": "0"}, {"up_to": None}],
    [{"up_to": "inf"}, {"up_to": None}],
    [{"up_to": True}, {"up_to": None}],
    [{"unit_amount": 1}],  # up_to is required, even null
    [{"up_to": None, "unit_amount": -1}],
    [{"up_to": None, "flat_amount": "x"}],
    [{"up_to": None, "price": 1}],
]  # fmt: skip


def plan_catalog_documents() -> list[object]:
    documents: list[object] = [plan_catalog(plan()), plan_catalog(), plan_catalog(plan(), plan(key="team"))]
    documents += [
        {"plans": [plan(prices=[price("flat")])]},
        {"plans": [plan(prices=[])]},
        {"plans": None},
        {"plans": {}},
    ]
    documents += [{"plans": [x]} for x in (None, 1, "pro", [], {}, {"key": "pro"}, {"currency": "USD"})]
    for key in [
        "pro",
        "pro-2024",
        "a",
        "p_1",
        "a-",
        "",
        "Pro",
        "1pro",
        "-pro",
        "_pro",
        "pro plan",
        "pro.x",
        "prö",
        None,
        1,
        MISSING,
    ]:
        documents.append(plan_catalog(plan(key=key)))
    for currency in ["USD", "JPY", "BHD", "usd", "XXX", "US", "USDX", "", None, 1, MISSING]:
        documents.append(plan_catalog(plan(currency=currency)))
    documents += [plan_catalog(plan(billing_interval=v)) for v in [*INTERVALS, MISSING]]
    documents += [plan_catalog(plan(payment_terms=v)) for v in [*TERMS, MISSING]]
    documents += [plan_catalog(plan(minimum_commitment=v)) for v in [*MONEY_VALUES, None, MISSING]]
    documents += [plan_catalog(plan(prices=v)) for v in [[], None, {}, "base", [None], [1], [[]], MISSING]]
    documents += [
        plan_catalog(plan(entitlements=v)) for v in [[], [{}], [{"feature": "sso"}], [1], ["sso"], None, {}, MISSING]
    ]
    documents += [
        plan_catalog(plan(id="pro")),
        plan_catalog(plan(name="Pro")),
        plan_catalog(plan(prices=[price("flat", meter="llm_tokens")])),
    ]
    for model in PRICES:
        for key in ["x", "a_1", "", "X", "1x", "a-b", "_x", None, 1, MISSING]:
            documents.append(with_price(model, key=key))
        for description in ["", "text", None, 1, MISSING]:
            documents.append(with_price(model, description=description))
        for tag in [MISSING, None, 1, "Flat", "tiered", "per-unit", "standard", ["flat"]]:
            documents.append(with_price(model, model=tag))
        documents.append(with_price(model, currency="USD"))
        if model != "flat":
            for meter_key in [MISSING, None, 1, ["llm_tokens"]]:
                documents.append(with_price(model, meter=meter_key))
            for filter_ in [{}, {"model": "small"}, {"model": 1}, {"model": None}, [], None, "model", MISSING]:
                documents.append(with_price(model, meter="llm_tokens", filter=filter_))
        else:
            documents += [with_price(model, filter={}), with_price(model, tiers=TIERS[0])]
    money_fields = {"flat": ["amount"], "per_unit": ["unit_amount"], "package": ["package_amount"],
                    "percentage": ["fixed_amount", "min_amount", "max_amount"]}  # fmt: skip
    for model, fields in money_fields.items():
        for field in fields:
            # one bound at a time: min_amount <= max_amount is checked by the code only
            others = {f: MISSING for f in ("min_amount", "max_amount") if f != field and model == "percentage"}
            documents += [with_price(model, **others, **{field: v}) for v in [*MONEY_VALUES, None, MISSING]]
    for model in ("graduated", "volume"):
        documents += [with_price(model, tiers=tiers) for tiers in [*TIERS, MISSING]]
        documents += [with_price(model, tiers=[{"up_to": v}, {"up_to": None}]) for v in POSITIVE_VALUES]
        documents += [
            with_price(model, tiers=[{"up_to": None, field: v}])
            for field in ("unit_amount", "flat_amount")
            for v in MONEY_VALUES
        ]
    documents += [with_price("package", package_size=v) for v in [*POSITIVE_VALUES, None, MISSING]]
    documents += [with_price("percentage", rate=v) for v in [*RATE_VALUES, MISSING]]
    documents += [
        with_price("percentage", min_amount=5, max_amount=5),
        with_price("percentage", min_amount=None, max_amount=0),
    ]
    return documents


PLAN_CATALOG_DOCUMENTS = plan_catalog_documents()


def test_plan_corpus_holds_both_verdicts():
    verdicts = [catalog_accepted(d) for d in PLAN_CATALOG_DOCUMENTS]
    assert sum(verdicts) > 150 and verdicts.count(False) > 250


@pytest.mark.parametrize(
    "document", PLAN_CATALOG_DOCUMENTS, ids=lambda d: repr(d.get("plans") if isinstance(d, dict) else d)[:90]
)
def test_plan_schema_agrees_with_parse_catalog(document):
    expected = catalog_accepted(document)
    errors = schema_errors(CATALOG_VALIDATOR, document)
    assert (not errors) == expected, f"parse_catalog accepts: {expected}; schema errors: {errors}"


def test_plans_is_a_section_of_its_own():
    for document in (
        {"plans": "anything"},
        {"plans": [{"id": "pro"}]},
        {"plans": [{"name": "later issues add these"}]},
    ):
        assert not catalog_accepted(document)
        assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted({"plans": [], "dunning": {"policies": []}})
    assert CATALOG_VALIDATOR.is_valid({"plans": [], "dunning": {"policies": []}})


# Differences, to be listed in the README with the others. The schema cannot relate one value
# to another, so these are checked by the code only:
PLAN_CODE_ONLY_REJECTS = {
    "duplicate plan keys": plan_catalog(plan(), plan()),
    "duplicate price keys": plan_catalog(plan(prices=[price("flat"), price("per_unit", key="base")])),
    "unknown meter": with_price("per_unit", meter="no_such_meter"),
    "empty meter": with_price("per_unit", meter=""),
    "no meters section": {"plans": [plan(prices=[price("per_unit")])]},
    "dimension not in the meter's group_by": with_price("per_unit", filter={"region": "eu"}),
    "dimension of a meter without group_by": with_price("package", filter={"model": "small"}),
    "tiers out of order": with_price("graduated", tiers=[{"up_to": 10}, {"up_to": 5}, {"up_to": None}]),
    "equal tier bounds": with_price("volume", tiers=[{"up_to": 10}, {"up_to": "10.0"}, {"up_to": None}]),
    "unbounded tier not last": with_price("graduated", tiers=[{"up_to": None}, {"up_to": 10}]),
    "min_amount > max_amount": with_price("percentage", min_amount=10, max_amount="9.99"),
    "interval rounding to zero": plan_catalog(plan(billing_interval="PT0.0000001S")),
}
# ... and the code reads numbers and durations more leniently than the schema describes them
# (Python's Decimal() and the duration parsers strip blanks and ignore case):
PLAN_CODE_ONLY_ACCEPTS = {
    "lower-case interval": plan_catalog(plan(billing_interval="p1m")),
    "blank-padded interval": plan_catalog(plan(billing_interval=" P1M ")),
    "lower-case payment terms": plan_catalog(plan(payment_terms="p30d")),
    "blank-padded amount": plan_catalog(plan(minimum_commitment=" 100 ")),
    "underscores in an amount": plan_catalog(plan(minimum_commitment="1_000")),
    "non-ASCII digits in an amount": plan_catalog(plan(minimum_commitment="١٠٠")),
    "negative zero amount": plan_catalog(plan(minimum_commitment="-0")),
    "rate with an exponent": with_price("percentage", rate="2.9e-2"),
    "negative zero rate": with_price("percentage", rate="-0"),
}


@pytest.mark.parametrize("name", list(PLAN_CODE_ONLY_REJECTS))
def test_plan_rules_only_the_code_checks(name):
    document = PLAN_CODE_ONLY_REJECTS[name]
    assert CATALOG_VALIDATOR.is_valid(document), schema_errors(CATALOG_VALIDATOR, document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("name", list(PLAN_CODE_ONLY_ACCEPTS))
def test_plan_spellings_only_the_code_accepts(name):
    document = PLAN_CODE_ONLY_ACCEPTS[name]
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)


@pytest.mark.parametrize("interval", ["P0M", "P0Y", "P00M", "P0Y0M"])
def test_zero_calendar_interval_rejected_by_both(interval):
    document = plan_catalog(plan(billing_interval=interval))
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("field", ["billing_interval", "payment_terms"])
def test_oversized_duration_is_a_catalog_error(field):
    document = plan_catalog(plan(**{field: "P9999999999D"}))
    assert not catalog_accepted(document)


def _interval_ok(text: str) -> bool:
    try:
        interval = Interval.parse(text)
    except ValueError:
        return False
    return interval.months > 0 or interval.fixed > timedelta(0)  # P0M: see the xfail above


def _terms_ok(text: str) -> bool:
    try:
        parse_iso_duration(text)
    except ValueError:
        return False
    return True


@st.composite
def duration_like(draw) -> str:
    """Well-formed designators in order (years/months, or weeks/days then T and time), with
    numbers that may be zero or fractional; half of the time shuffled."""
    number = st.sampled_from(["0", "1", "7", "12", "0.5", "90"])
    if draw(st.booleans()):
        units = [u for u in "YM" if draw(st.booleans())]
    else:
        units = [u for u in "WD" if draw(st.booleans())]
        time = [u for u in "HMS" if draw(st.booleans())]
        units += ["T", *time] if time or draw(st.booleans()) else []
    parts = [u if u == "T" else draw(number) + u for u in units]
    if draw(st.booleans()):
        parts = draw(st.permutations(parts))
    return "P" + "".join(parts)


# Upper-case only (lower case is a code-only spelling); short numbers, so none overflows a
# timedelta and no fraction of a second rounds to zero.
DURATION_TEXT = (
    st.text(alphabet="PYMWDTHS0123456789.", max_size=9).map(lambda s: s if s[:1] == "P" else "P" + s) | duration_like()
)


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_billing_intervals_agree(text):
    schema = CATALOG_SCHEMA["$defs"]["plan"]["properties"]["billing_interval"]
    assert validator(schema).is_valid(text) == _interval_ok(text)


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_payment_terms_agree(text):
    schema = CATALOG_SCHEMA["$defs"]["plan"]["properties"]["payment_terms"]
    assert validator(schema).is_valid(text) == _terms_ok(text)


def _decimal_value(value: str, check) -> bool:
    try:
        return check(Decimal(value)) and Decimal(value).is_finite()
    except ArithmeticError:
        return False


def _negative_zero(text: str) -> bool:
    return text.strip().startswith("-") and _decimal_value(text, lambda d: d == 0)


# Decimal strings: ASCII only, no blanks or underscores (code-only spellings), no negative zero.
DECIMAL_TEXT = st.text(alphabet="0123456789.+-eE", max_size=7).filter(lambda s: not _negative_zero(s))


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_amount_strings_agree(text):
    document = plan_catalog(plan(minimum_commitment=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_tier_bounds_agree(text):
    document = with_price("graduated", tiers=[{"up_to": text}, {"up_to": None}])
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(st.text(alphabet="0125.+-", max_size=6).filter(lambda s: not _negative_zero(s)))
def test_random_rate_strings_agree(text):
    document = with_price("percentage", rate=text)  # exponents are a code-only spelling for rates
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


def test_catalog_with_plans_parses():
    catalog = parse_catalog(
        plan_catalog(plan(), plan(key="team", currency="JPY", billing_interval="P1Y", minimum_commitment=None))
    )
    assert [p.key for p in catalog.plans] == ["pro", "team"]
    assert [p.model for p in catalog.plan("pro").prices] == list(PRICES)
    assert catalog.plan("team").interval == Interval(months=12)
    assert catalog.plan("pro").prices[3].tiers[0].up_to == Decimal(1_000_000)


# --- catalog: entitlements -------------------------------------------------------------

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
    assert CATALOG_SCHEMA["$defs"]["feature"]["pattern"] == _pattern(model, "feature") == entitlement_spec.FEATURE_REGEX


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


# --- catalog: dunning ------------------------------------------------------------------

DUNNING_DEFS = {
    dunning_policy.DunningConfig: "dunning",
    dunning_policy.Policy: "dunning_policy",
    dunning_policy.Step: "dunning_step",
}


@pytest.mark.parametrize("model", list(DUNNING_DEFS), ids=lambda m: m.__name__)
def test_dunning_definitions_match_the_models(model):
    schema = CATALOG_SCHEMA["$defs"][DUNNING_DEFS[model]]
    assert list(schema["properties"]) == list(model.model_fields)
    assert schema.get("required", []) == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and schema["additionalProperties"] is False
    assert CATALOG_SCHEMA["properties"]["dunning"] == {"$ref": "#/$defs/dunning"}


def test_applies_to_matches_the_model():
    applies_to, null = CATALOG_SCHEMA["$defs"]["dunning_policy"]["properties"]["applies_to"]["anyOf"]
    assert null == {"type": "null"}
    assert list(applies_to["properties"]) == list(dunning_policy.AppliesTo.model_fields)
    assert dunning_policy.AppliesTo.model_config["extra"] == "forbid" and applies_to["additionalProperties"] is False


def test_dunning_enums_and_patterns_match():
    step = CATALOG_SCHEMA["$defs"]["dunning_step"]["properties"]
    assert step["action"]["enum"] == [a.value for a in dunning_policy.Action]
    assert step["channels"]["items"]["enum"] == list(dunning_policy.CHANNELS)
    assert step["channels"]["uniqueItems"] is True
    policy = CATALOG_SCHEMA["$defs"]["dunning_policy"]["properties"]
    assert policy["key"]["pattern"] == _pattern(dunning_policy.Policy, "key")
    assert policy["min_amount_due"]["$ref"] == "#/$defs/positive"
    assert policy["steps"]["minItems"] == 1
    # `after` is a fixed duration, spelled like payment_terms (both parsed by parse_iso_duration)
    assert step["after"]["pattern"] == PLAN_SCHEMA["properties"]["payment_terms"]["pattern"]
    # ... and so is max_promise, which must also be longer than zero (a digit 1-9 somewhere)
    positive = PLAN_SCHEMA["properties"]["payment_terms"]["pattern"].replace("^P(?!$)", "^P(?!$)(?=[^1-9]*[1-9])", 1)
    assert policy["max_promise"]["pattern"] == positive
    from bastionary.settings import format_iso_duration

    default = dunning_policy.Policy.model_fields["max_promise"].default
    assert default == dunning_policy.DEFAULT_MAX_PROMISE
    assert f"default {format_iso_duration(default)}" in policy["max_promise"]["description"]


# The email templates shipped with the package, as the schema and README name them.
_TEMPLATE_ORDER = ["friendly", "firm", "final_notice", "suspend", "mark_uncollectible"]


def test_email_templates_named_in_the_schema_exist():
    from bastionary.dunning.notify.email import available_templates

    assert sorted(available_templates()) == sorted(_TEMPLATE_ORDER)
    described = CATALOG_SCHEMA["$defs"]["dunning_step"]["properties"]["template"]["description"]
    assert f"{', '.join(_TEMPLATE_ORDER[:-1])} or {_TEMPLATE_ORDER[-1]}" in described
    assert ", ".join(_TEMPLATE_ORDER) in CATALOG_SCHEMA["description"]


STEPS = [
    {"after": "P1D", "action": "remind", "channels": ["email", "webhook"], "template": "friendly"},
    {"after": "P7D", "action": "remind", "channels": ["email", "webhook"], "template": "firm"},
    {"after": "P14D", "action": "final_notice", "channels": ["email", "webhook"]},
    {"after": "P21D", "action": "suspend", "channels": [], "template": None},
    {"after": "P30D", "action": "mark_uncollectible"},
]


def step(**overrides: object) -> dict:
    merged = {"after": "P1D", "action": "remind", "channels": ["webhook"], "template": "friendly", **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


def policy(**overrides: object) -> dict:
    merged = {
        "key": "standard",
        "applies_to": {"plans": ["pro"]},
        "min_amount_due": "1.00",
        "steps": STEPS,
        **overrides,
    }
    return {k: v for k, v in merged.items() if v is not MISSING}


def dunning_catalog(*policies: object, section: object = MISSING) -> dict:
    document = plan_catalog(plan(), plan(key="team"))
    document["dunning"] = {"policies": list(policies)} if section is MISSING else section
    return document


def with_step(**overrides: object) -> dict:
    return dunning_catalog(policy(steps=[step(**overrides)]))


MAX_PROMISES = ["P30D", "P1W", "PT1H", "PT0.5S", "P0DT1S", "P0D", "PT0S", "P0W0DT0H", "PT0.0S", "P1M", "P1Y", "P",
                "PT", "30D", "P-1D", "", None, [], {}, MISSING]  # fmt: skip
AFTERS = ["P1D", "PT5S", "P1W", "P0D", "PT0S", "P2W3D", "PT36H", "PT1.5S", "P1DT12H", "P1M", "P1Y", "P", "PT", "P1DT",
          "1D", "P-1D", "-P1D", "P1.5D", "PT1D", "", None, [], {}, ["P1D"], MISSING]  # fmt: skip


def dunning_catalog_documents() -> list[object]:
    documents: list[object] = [
        dunning_catalog(policy()),
        dunning_catalog(),
        dunning_catalog(policy(), policy(key="fallback", applies_to=MISSING)),
    ]
    documents += [
        dunning_catalog(
            policy(applies_to={"plans": ["pro"]}), policy(key="team_policy", applies_to={"plans": ["team"]})
        )
    ]
    for section in [{}, {"policies": []}, None, [], "policies", 1, {"policies": None}, {"policies": {}}, {"policies": [None]},
                    {"policies": ["standard"]}, {"policies": [[]]}, {"policy": []}, {"policies": [], "enabled": True}]:  # fmt: skip
        documents.append(dunning_catalog(section=section))
    for key in ["standard", "a", "p_1", "", "Standard", "1p", "_p", "p-1", "p.x", "p 1", None, 1, MISSING]:
        documents.append(dunning_catalog(policy(key=key)))
    for applies_to in [{"plans": ["pro"]}, {"plans": ["pro", "team"]}, {"plans": []}, {}, None, MISSING, {"plans": ["pro", "pro"]},
                       {"plans": "pro"}, {"plans": [1]}, {"plans": [None]}, {"plans": None}, {"plan": ["pro"]}, [], ["pro"], "pro", 1]:  # fmt: skip
        documents.append(dunning_catalog(policy(applies_to=applies_to)))
    documents += [dunning_catalog(policy(min_amount_due=v)) for v in [*POSITIVE_VALUES, None, MISSING]]
    documents += [dunning_catalog(policy(max_promise=v)) for v in MAX_PROMISES]
    documents += [
        dunning_catalog(policy(steps=v))
        for v in [[], None, {}, "P1D", [None], [1], [[]], [{}], STEPS[:1], STEPS[-1:], MISSING]
    ]
    documents += [dunning_catalog(policy(name="Standard")), dunning_catalog(policy(steps=[step(price=1)]))]
    documents += [with_step(after=v) for v in AFTERS]
    for action in [
        *(a.value for a in dunning_policy.Action),
        "Remind",
        "warn",
        "suspended",
        "",
        None,
        1,
        ["remind"],
        MISSING,
    ]:
        documents.append(with_step(action=action))
    for channels in [[], ["email"], ["webhook"], ["email", "webhook"], ["webhook", "email"], ["email", "email"],
                     ["sms"], ["Email"], "email", None, [None], [1], [["email"]], {}, MISSING]:  # fmt: skip
        documents.append(with_step(channels=channels))
    for template in [*_TEMPLATE_ORDER, "nope", "", None, 1, [], ["friendly"], MISSING]:
        documents.append(with_step(template=template))  # webhook only: the template is not checked
    documents += [with_step(channels=["email"], template=t) for t in _TEMPLATE_ORDER]
    documents += [
        with_step(action=a, channels=["email"], template=MISSING)
        for a in ("final_notice", "suspend", "mark_uncollectible")
    ]
    return documents


DUNNING_CATALOG_DOCUMENTS = dunning_catalog_documents()


def test_dunning_corpus_holds_both_verdicts():
    verdicts = [catalog_accepted(d) for d in DUNNING_CATALOG_DOCUMENTS]
    assert sum(verdicts) > 40 and verdicts.count(False) > 60


@pytest.mark.parametrize("document", DUNNING_CATALOG_DOCUMENTS, ids=lambda d: repr(d["dunning"])[:90])
def test_dunning_schema_agrees_with_parse_catalog(document):
    expected = catalog_accepted(document)
    errors = schema_errors(CATALOG_VALIDATOR, document)
    assert (not errors) == expected, f"parse_catalog accepts: {expected}; schema errors: {errors}"


# Differences, listed in the README with the others. The schema cannot relate one value to
# another, and the email templates are files of the package:
DUNNING_CODE_ONLY_REJECTS = {
    "duplicate policy keys": dunning_catalog(policy(), policy(applies_to={"plans": ["team"]})),
    "two default policies": dunning_catalog(policy(applies_to=MISSING), policy(key="fallback", applies_to=None)),
    "a plan in two policies": dunning_catalog(policy(), policy(key="other", applies_to={"plans": ["team", "pro"]})),
    "unknown plan": dunning_catalog(policy(applies_to={"plans": ["enterprise"]})),
    "steps out of order": dunning_catalog(policy(steps=[step(after="P7D"), step(after="P1D")])),
    "equal afters": dunning_catalog(policy(steps=[step(after="P1D"), step(after="PT24H")])),
    "mark_uncollectible not last": dunning_catalog(
        policy(steps=[step(action="mark_uncollectible"), step(after="P2D")])
    ),
    "unknown email template": with_step(channels=["email"], template="nope"),
    "oversized after": with_step(after="P9999999999D"),
    "oversized max_promise": dunning_catalog(policy(max_promise="P9999999999D")),
    "max_promise rounding to zero": dunning_catalog(policy(max_promise="PT0.0000001S")),
}
# ... and the code reads durations and amounts more leniently (parse_iso_duration strips
# blanks, ignores case and reads a number as seconds; Decimal() strips blanks):
DUNNING_CODE_ONLY_ACCEPTS = {
    "after in seconds": with_step(after=86400),
    "lower-case after": with_step(after="p1d"),
    "blank-padded after": with_step(after=" P1D "),
    "blank-padded min_amount_due": dunning_catalog(policy(min_amount_due=" 1 ")),
    "max_promise in seconds": dunning_catalog(policy(max_promise=86400)),
    "lower-case max_promise": dunning_catalog(policy(max_promise="p30d")),
}


@pytest.mark.parametrize("name", list(DUNNING_CODE_ONLY_REJECTS))
def test_dunning_rules_only_the_code_checks(name):
    document = DUNNING_CODE_ONLY_REJECTS[name]
    assert CATALOG_VALIDATOR.is_valid(document), schema_errors(CATALOG_VALIDATOR, document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("name", list(DUNNING_CODE_ONLY_ACCEPTS))
def test_dunning_spellings_only_the_code_accepts(name):
    document = DUNNING_CODE_ONLY_ACCEPTS[name]
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)


def _after_ok(text: str) -> bool:
    return catalog_accepted(with_step(after=text))


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_step_afters_agree(text):
    assert CATALOG_VALIDATOR.is_valid(with_step(after=text)) == _after_ok(text)


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_max_promises_agree(text):
    document = dunning_catalog(policy(max_promise=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_min_amounts_due_agree(text):
    document = dunning_catalog(policy(min_amount_due=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


def test_dunning_fixture_catalog_validates():
    document = yaml.safe_load((ROOT / "tests" / "fixtures" / "dunning_catalog.yaml").read_text())
    assert schema_errors(CATALOG_VALIDATOR, document) == []
    assert [p.key for p in parse_catalog(document).dunning.policies] == ["standard"]


# --- dunning: notices, payments and responses ------------------------------------------

NOTICE_SCHEMA = load_schema("dunning-notice.schema.json")
PAYMENT_SCHEMA = load_schema("payment-event.schema.json")
RESPONSE_SCHEMA = load_schema("dunning-response.schema.json")
NOTICE_VALIDATOR = validator(NOTICE_SCHEMA)
PAYMENT_VALIDATOR = validator(PAYMENT_SCHEMA)
RESPONSE_VALIDATOR = validator(RESPONSE_SCHEMA)

DUE = datetime(2026, 3, 1, tzinfo=UTC)
NOTICE_POLICY = dunning_policy.Policy.model_validate(policy(applies_to=MISSING))


def dunning_case(
    total: str = "100.000000000", paid: str = "0", email: str | None = None, **invoice: object
) -> dunning_engine.Case:
    facts = {
        "invoice_id": "inv-2026-03-0042", "customer_id": "cust-42", "plan": "pro", "currency": "USD", "total": Decimal(total),
        "issued_at": DUE - timedelta(days=14), "due_at": DUE, "period_start": DUE - timedelta(days=42),
        "period_end": DUE - timedelta(days=14), **invoice,
    }  # fmt: skip
    return dunning_engine.Case(dunning_engine.InvoiceFacts(**facts), paid=Decimal(paid), recipient_email=email)


def notices(case: dunning_engine.Case, now: datetime) -> list[dict]:
    return [r.data for r in dunning_engine.advance(case, NOTICE_POLICY, now) if r.kind == "notice"]


NOTICE_SAMPLES = [
    *notices(dunning_case(email="ap@example.com"), DUE + timedelta(days=1, hours=3)),  # step 1, both channels
    *notices(dunning_case(paid="40.5"), DUE + timedelta(days=14, microseconds=250_000)),  # final_notice, no template
    *notices(dunning_case(total="12000", currency="JPY"), DUE + timedelta(days=40)),  # suspend, mark_uncollectible
    *notices(dunning_case(total="0.000000009", paid="0.000000001"), DUE + timedelta(days=1)),  # an exponent
]


def test_notice_samples_cover_every_action():
    assert {n["action"] for n in NOTICE_SAMPLES} == {a.value for a in dunning_policy.Action}


@pytest.mark.parametrize("notice", NOTICE_SAMPLES, ids=lambda n: f"step {n['step']} {n['action']}")
def test_notices_built_by_the_engine_validate(notice):
    assert schema_errors(NOTICE_VALIDATOR, wire(notice)) == []
    assert list(NOTICE_SCHEMA["properties"]) == list(notice) == NOTICE_SCHEMA["required"]


def test_notice_schema_enums_match_the_policy():
    assert NOTICE_SCHEMA["properties"]["action"]["enum"] == [a.value for a in dunning_policy.Action]
    assert NOTICE_SCHEMA["properties"]["channels"]["items"]["enum"] == list(dunning_policy.CHANNELS)
    assert NOTICE_SCHEMA["properties"]["policy"]["pattern"] == _pattern(dunning_policy.Policy, "key")


def test_notice_cloudevent_carries_the_notice_id():
    (notice,) = NOTICE_SAMPLES[:1]
    event = orjson.loads(dunning_dunner.notice_event("notice", notice, "2000-01-01T00:00:00+00:00"))
    assert (event["id"], event["type"], event["subject"], event["time"]) == (
        notice["notice_id"],
        dunning_dunner.STEP_TYPE,
        notice["customer_id"],
        notice["decided_at"],
    )
    assert event["data"] == notice
    assert notice["notice_id"] == dunning_engine.notice_id(notice["invoice_id"], notice["step"])


@pytest.mark.parametrize(
    "change",
    [{"step": 0}, {"days_overdue": -1}, {"amount_due": 60}, {"amount_due": "-1"}, {"action": "warn"}, {"channels": ["sms"]},
     {"due_at": "2026-03-01"}, {"recipient_email": 1}, {"extra": 1}, {"notice_id": MISSING}],
)  # fmt: skip
def test_notice_schema_rejects(change):
    notice = {k: v for k, v in {**NOTICE_SAMPLES[0], **change}.items() if v is not MISSING}
    assert not NOTICE_VALIDATOR.is_valid(notice)


def payment_accepted(value: object) -> bool:
    try:
        dunning_events.parse_payment(orjson.dumps(value))
    except InvalidBillingEvent:
        return False
    return True


def response_accepted(value: object) -> bool:
    try:
        dunning_events.parse_response(orjson.dumps(value))
    except InvalidBillingEvent:
        return False
    return True


PAYMENT = {
    "specversion": "1.0", "id": "psp-evt-7781", "source": "//payments.example/psp", "type": "bastionary.payment.succeeded.v1",
    "subject": "cust-42", "time": "2026-03-05T10:00:00Z",
    "data": {"invoice_id": "inv-2026-03-0042", "payment_id": "pay-1", "customer_id": "cust-42", "amount": "40.00",
             "currency": "USD", "paid_at": "2026-03-05T09:58:12+01:00", "reason": ""},
}  # fmt: skip
RESPONSE = {
    "specversion": "1.0", "id": "resp-1", "source": "//crm.example", "type": "bastionary.dunning.promised.v1",
    "time": "2026-03-03T16:20:00Z",
    "data": {"invoice_id": "inv-2026-03-0042", "notice_id": "n-1", "customer_id": "cust-42", "channel": "email",
             "promised_by": "2026-03-10T00:00:00Z", "reason": "paying next week"},
}  # fmt: skip


def billing_event(base: dict, data_changes: dict | None = None, /, **envelope: object) -> dict:
    merged = {**base, **envelope}
    if data_changes is not None:
        merged["data"] = {k: v for k, v in {**base["data"], **data_changes}.items() if v is not MISSING}
    return {k: v for k, v in merged.items() if v is not MISSING}


# Times both read (the code's extra spellings and Unix times are code-only, see below).
EVENT_TIMES = ["2026-03-05T10:00:00Z", "2026-03-05t10:00:00.123456789z", "2026-03-05T10:00:00-07:30", "0001-01-01T00:00:00Z",
               "2026-03-05T10:00:00", "2026-03-05", "2026-02-30T10:00:00Z", "2026-03-05T24:00:00Z", "", "x", None, [], {}]  # fmt: skip
ENVELOPE_CHANGES = [
    {"specversion": v} for v in ["1.0 ", "1", 1.0, None, MISSING]
] + [{"id": v} for v in ["", 1, None, MISSING]] + [{"source": v} for v in ["", 1, None, MISSING]] + [
    {"type": v} for v in ["bastionary.payment.succeeded", "llm.completion", "", 1, None, MISSING]
] + [{"time": v} for v in [*EVENT_TIMES, MISSING]] + [{"data": v} for v in [None, [], "x", 1, MISSING]] + [
    {"subject": 1}, {"subject": MISSING}, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, {"ext": {"a": 1}},
]  # fmt: skip


def payment_events() -> list[object]:
    events: list[object] = [None, 1, "x", [], [PAYMENT], {}]
    events += [billing_event(PAYMENT, **change) for change in ENVELOPE_CHANGES]
    for kind in dunning_events.PAYMENT_TYPES:
        events.append(billing_event(PAYMENT, type=kind))
        events.append(billing_event(PAYMENT, {k: MISSING for k in PAYMENT["data"] if k != "invoice_id"}, type=kind))
        for field in ("payment_id", "amount", "currency"):
            events += [billing_event(PAYMENT, {field: v}, type=kind) for v in (MISSING, None)]
        # "0.001" USD is finer than a cent: only the code knows each currency's minor unit.
        events += [billing_event(PAYMENT, {"amount": v}, type=kind) for v in POSITIVE_VALUES if v != "0.001"]
        events += [billing_event(PAYMENT, {"currency": v}, type=kind) for v in ["JPY", "usd", "XXX", "", 1]]
    events += [billing_event(PAYMENT, {"invoice_id": v}) for v in ["i", "", None, 1, [], MISSING]]
    events += [billing_event(PAYMENT, {"payment_id": v}) for v in ["p", "", 1, []]]
    events += [billing_event(PAYMENT, {"customer_id": v}) for v in ["c", "", None, 1, MISSING]]
    events += [billing_event(PAYMENT, {"paid_at": v}) for v in [*EVENT_TIMES, MISSING]]
    events += [billing_event(PAYMENT, {"reason": v}) for v in ["", "card_declined", None, 1, MISSING]]
    events += [billing_event(PAYMENT, {"psp": {"charge": "ch_1"}})]
    return events


def response_events() -> list[object]:
    events: list[object] = [None, 1, "x", [], [RESPONSE], {}]
    events += [
        billing_event(RESPONSE, **change)
        for change in ENVELOPE_CHANGES
        if change.get("type") != "bastionary.payment.succeeded"
    ]
    events.append(billing_event(RESPONSE, type="bastionary.payment.succeeded.v1"))
    for kind in dunning_events.RESPONSE_TYPES:
        events.append(billing_event(RESPONSE, type=kind))
        events.append(billing_event(RESPONSE, {k: MISSING for k in RESPONSE["data"] if k != "invoice_id"}, type=kind))
        events += [
            billing_event(RESPONSE, {"promised_by": v}, type=kind) for v in (MISSING, None, "2026-03-10", "soon")
        ]
    events += [billing_event(RESPONSE, {"invoice_id": v}) for v in ["i", "", None, 1, MISSING]]
    for field in ("notice_id", "customer_id"):
        events += [billing_event(RESPONSE, {field: v}) for v in ["n", "", None, 1, []]]
    for field in ("channel", "reason"):
        events += [billing_event(RESPONSE, {field: v}) for v in ["webhook", "", None, 1, []]]
    events += [
        billing_event(RESPONSE, {"promised_by": v})
        for v in ["2026-03-03T16:20:00.000001Z", "2026-03-04T00:00:00+02:00", *EVENT_TIMES[6:]]
    ]
    return events


PAYMENT_EVENTS = payment_events()
RESPONSE_EVENTS = response_events()


def test_dunning_event_corpora_hold_both_verdicts():
    payments = [payment_accepted(e) for e in PAYMENT_EVENTS]
    responses = [response_accepted(e) for e in RESPONSE_EVENTS]
    assert sum(payments) > 40 and payments.count(False) > 60
    assert sum(responses) > 30 and responses.count(False) > 40


@pytest.mark.parametrize("candidate", PAYMENT_EVENTS, ids=lambda v: repr(v)[:90])
def test_payment_schema_agrees_with_parse_payment(candidate):
    expected = payment_accepted(candidate)
    errors = schema_errors(PAYMENT_VALIDATOR, wire(candidate))
    assert (not errors) == expected, f"parse_payment accepts: {expected}; schema errors: {errors}"


def test_payment_amounts_finer_than_the_currency_only_the_code_rejects():
    candidate = billing_event(PAYMENT, {"amount": "0.001", "currency": "USD"})
    assert not schema_errors(PAYMENT_VALIDATOR, wire(candidate))
    assert not payment_accepted(candidate)
    assert payment_accepted(billing_event(PAYMENT, {"amount": "0.001", "currency": "BHD"}))


@pytest.mark.parametrize("candidate", RESPONSE_EVENTS, ids=lambda v: repr(v)[:90])
def test_response_schema_agrees_with_parse_response(candidate):
    expected = response_accepted(candidate)
    errors = schema_errors(RESPONSE_VALIDATOR, wire(candidate))
    assert (not errors) == expected, f"parse_response accepts: {expected}; schema errors: {errors}"


def test_dunning_event_types_match_the_code():
    assert PAYMENT_SCHEMA["properties"]["type"]["enum"] == list(dunning_events.PAYMENT_TYPES)
    assert RESPONSE_SCHEMA["properties"]["type"]["enum"] == list(dunning_events.RESPONSE_TYPES)
    currency = PAYMENT_SCHEMA["properties"]["data"]["properties"]["currency"]["anyOf"][0]
    assert currency["enum"] == list(MINOR_UNITS)
    assert list(PAYMENT_SCHEMA["properties"]["data"]["properties"]) == list(dunning_events.PaymentData.model_fields)
    assert list(RESPONSE_SCHEMA["properties"]["data"]["properties"]) == list(dunning_events.ResponseData.model_fields)


# Differences, listed in the README. Checked against the stored invoice (unknown_invoice,
# wrong_currency) or relating two values: the code only.
DUNNING_EVENT_CODE_ONLY_REJECTS = {
    "promised_by before time": (
        RESPONSE_VALIDATOR,
        response_accepted,
        billing_event(RESPONSE, {"promised_by": "2026-03-01T00:00:00Z"}),
    ),
    "promised_by equal to time": (
        RESPONSE_VALIDATOR,
        response_accepted,
        billing_event(RESPONSE, {"promised_by": "2026-03-03T17:20:00+01:00"}),
    ),
    "leap second": (PAYMENT_VALIDATOR, payment_accepted, billing_event(PAYMENT, time="2016-12-31T23:59:60Z")),
}
# ... and pydantic reads times and amounts more leniently than the schemas describe them.
DUNNING_EVENT_CODE_ONLY_ACCEPTS = {
    "Unix time": (PAYMENT_VALIDATOR, payment_accepted, billing_event(PAYMENT, time=1772704800)),
    "Unix time as a string": (RESPONSE_VALIDATOR, response_accepted, billing_event(RESPONSE, time="1772554800")),
    "time without seconds": (
        PAYMENT_VALIDATOR,
        payment_accepted,
        billing_event(PAYMENT, {"paid_at": "2026-03-05T10:00Z"}),
    ),
    "space for T": (
        RESPONSE_VALIDATOR,
        response_accepted,
        billing_event(RESPONSE, {"promised_by": "2026-03-10 00:00:00Z"}),
    ),
    "blank-padded amount": (PAYMENT_VALIDATOR, payment_accepted, billing_event(PAYMENT, {"amount": " 40 "})),
    "underscores in an amount": (PAYMENT_VALIDATOR, payment_accepted, billing_event(PAYMENT, {"amount": "1_000"})),
}


@pytest.mark.parametrize("name", list(DUNNING_EVENT_CODE_ONLY_REJECTS))
def test_dunning_event_rules_only_the_code_checks(name):
    schema_validator, accepted, candidate = DUNNING_EVENT_CODE_ONLY_REJECTS[name]
    assert schema_validator.is_valid(candidate), schema_errors(schema_validator, candidate)
    assert not accepted(candidate)


@pytest.mark.parametrize("name", list(DUNNING_EVENT_CODE_ONLY_ACCEPTS))
def test_dunning_event_spellings_only_the_code_accepts(name):
    schema_validator, accepted, candidate = DUNNING_EVENT_CODE_ONLY_ACCEPTS[name]
    assert not schema_validator.is_valid(candidate)
    assert accepted(candidate)


@pytest.mark.parametrize(
    ("candidate", "code"),
    [
        (b"{", "invalid_json"),
        (b"", "invalid_json"),
        (b"[]", "not_cloudevent"),
        (orjson.dumps(billing_event(PAYMENT, type="bastionary.payment.settled.v1")), "unknown_type"),
        (orjson.dumps(billing_event(PAYMENT, {"amount": "-40.00"})), "invalid_data"),
        (orjson.dumps(billing_event(PAYMENT, {"payment_id": MISSING})), "invalid_data"),
    ],
)
def test_payment_dead_letter_reasons_as_documented(candidate, code):
    with pytest.raises(InvalidBillingEvent) as caught:
        dunning_events.parse_payment(candidate)
    assert caught.value.code == code


def test_payment_reasons_checked_against_the_invoice():
    _, kind, data = dunning_events.parse_payment(orjson.dumps(PAYMENT))
    for currency, code in ((None, "unknown_invoice"), ("EUR", "wrong_currency")):
        with pytest.raises(InvalidBillingEvent) as caught:
            dunning_events.check_against_invoice(kind, data, currency)
        assert caught.value.code == code
    dunning_events.check_against_invoice(kind, data, "USD")


# --- the README ------------------------------------------------------------------------

README_TEXT = README.read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README_TEXT, flags=re.DOTALL)


def test_readme_record_examples_are_accepted():
    examples = _blocks("json")
    assert len(examples) >= 2
    for example in examples:
        value = json.loads(example)
        assert schema_errors(RECORD_VALIDATOR, value) == []
        assert worker_accepts(example.encode())


def test_readme_binary_example_is_accepted():
    (example,) = _blocks("text")
    headers = [(name, text.encode()) for name, text in re.findall(r"^(ce_\w+): (.+)$", example, flags=re.MULTILINE)]
    (value,) = re.findall(r"^value: (.+)$", example, flags=re.MULTILINE)
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time"} <= {h[0] for h in headers}
    assert worker_accepts(value.encode(), headers)
    assert schema_errors(EVENT_VALIDATOR, binary_event(value.encode(), headers)) == []


def _table_keys(heading: str) -> list[str]:
    """The `code` in the first column of every table row in the README section ``heading``."""
    section = README_TEXT.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def test_readme_lists_every_error_class():
    # A code may appear twice: once where it rejects a whole record, once for one event.
    assert sorted(set(_table_keys("Error classes"))) == sorted(c.value for c in ErrorClass)


def test_readme_lists_every_aggregation():
    assert _table_keys("Meters") == [a.value for a in Aggregation]


def test_readme_lists_the_required_attributes():
    assert _table_keys("Required attributes") == list(REQUIRED_ATTRIBUTES)


def test_readme_lists_every_dead_letter_header():
    section = README_TEXT.split("\n## Topics\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^  \| `([\w.]+)` \|", section, flags=re.MULTILINE)
    written = "".join(
        (ROOT / "src" / "bastionary" / name).read_text() for name in ("outbound.py", "metering/planning.py")
    )
    assert documented == re.findall(r'\("((?:error|source)\.\w+)", ', written)


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
    return VALUE_METERS.readings(member.event, lambda: parsed.exact_data(0))


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
    assert "`allow_negative: true`" in _section("Meters")


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


_RUN_README_SQL = """
import json, sys, tempfile
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
with tempfile.TemporaryDirectory() as tmp:
    client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
    ClickHouseUsageStore(client).migrate()
    failures = []
    for sql in json.loads(sys.stdin.read()):
        try:
            client.query(sql)
        except Exception as exc:
            failures.append(f"{sql.splitlines()[0]}: {str(exc).splitlines()[0]}")
    print(json.dumps(failures))
"""


@pytest.mark.integration
def test_readme_queries_run_on_the_migrated_tables():
    """Every ```sql example runs on freshly migrated tables (in chdb, in a child process:
    chdb allows one database directory per process)."""
    import subprocess
    import sys

    queries = _blocks("sql")
    assert len(queries) >= 5
    done = subprocess.run(
        [sys.executable, "-c", _RUN_README_SQL], input=json.dumps(queries), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# --- the README: dunning ---------------------------------------------------------------


def _section(heading: str, level: str = "##") -> str:
    return README_TEXT.split(f"\n{level} {heading}\n", 1)[1].split(f"\n{level} ", 1)[0].split("\n## ", 1)[0]


def test_readme_dunning_examples_are_accepted():
    examples = [json.loads(block) for block in _blocks("jsonc")]
    assert {e["type"] for e in examples} >= {PAYMENT["type"], RESPONSE["type"], dunning_dunner.STEP_TYPE}
    for example in examples:
        value = orjson.dumps(example)
        if example["type"] in dunning_events.PAYMENT_TYPES:
            assert schema_errors(PAYMENT_VALIDATOR, example) == []
            dunning_events.parse_payment(value)
        elif example["type"] in dunning_events.RESPONSE_TYPES:
            assert schema_errors(RESPONSE_VALIDATOR, example) == []
            dunning_events.parse_response(value)
        else:
            assert example["type"] == dunning_dunner.STEP_TYPE
            assert schema_errors(NOTICE_VALIDATOR, example["data"]) == []
            assert orjson.loads(dunning_dunner.notice_event("notice", example["data"], "")) == example


def test_readme_notice_tables_match_the_code():
    keys = _table_keys("Dunning notices")
    envelope = orjson.loads(dunning_dunner.notice_event("notice", NOTICE_SAMPLES[0], ""))
    assert keys == [k for k in envelope if k not in ("specversion", "data")] + list(NOTICE_SCHEMA["properties"])


def test_readme_lists_every_dunning_type():
    for heading, types in (
        ("Payment events", dunning_events.PAYMENT_TYPES),
        ("Dunning responses", dunning_events.RESPONSE_TYPES),
    ):
        section = _section(heading)
        assert re.findall(r"^\| `(bastionary\.[\w.]+)` \|", section, flags=re.MULTILINE) == list(types)
        fields = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
        model = dunning_events.PaymentData if heading == "Payment events" else dunning_events.ResponseData
        assert sorted(fields) == sorted(model.model_fields)


def test_readme_dead_letter_reasons_are_the_codes():
    raised = set()
    for module in ("dunning/events.py", "rating/events.py"):
        raised |= set(
            re.findall(r'InvalidBillingEvent\(\s*"(\w+)"', (ROOT / "src" / "bastionary" / module).read_text())
        )
    worker = (ROOT / "src" / "bastionary" / "worker" / "services" / "dunning.py").read_text()
    raised |= set(re.findall(r'InvalidBillingEvent\(\s*"(\w+)"', worker))
    section = _section("Dunning dead letters")
    payment_reasons = re.findall(r"^\| `(\w+)` \| ", section, flags=re.MULTILINE)
    assert payment_reasons == [
        "invalid_json",
        "not_cloudevent",
        "unknown_type",
        "invalid_data",
        "unknown_invoice",
        "wrong_currency",
    ]
    assert set(payment_reasons) <= raised
    on_dunning_dlq = set(re.findall(r"`(\w+)`", section.split("On `dunning.dlq`", 1)[1]))
    assert on_dunning_dlq >= set(payment_reasons) - {"wrong_currency"}
    # Every code the dunning code raises is documented (unknown_plan is a subscription's, on billing.dlq).
    assert raised - {"unknown_plan"} <= set(payment_reasons) | on_dunning_dlq
    assert "promise_too_far" in raised and "promise_too_far" in on_dunning_dlq
    written = (ROOT / "src" / "bastionary" / "outbound.py").read_text()  # every dead letter's headers
    documented = re.findall(r"^\| `((?:error|source)\.\w+)` \|", section, flags=re.MULTILINE)
    assert documented == [h for h in re.findall(r'\("((?:error|source)\.\w+)", ', written) if h != "source.index"]


def _table_columns(table: str) -> list[str]:
    section = _section(f"`{table}`", "###")
    return re.findall(r"^\| `(\w+)` \| [A-Z]", section, flags=re.MULTILINE)


def test_readme_lists_every_dunning_column_and_kind():
    from bastionary.storage import dunning as dunning_storage

    assert _table_columns("receivables") == list(dunning_storage.RECEIVABLE_COLUMNS)
    assert _table_columns("payments") == list(dunning_storage.PAYMENT_COLUMNS)
    assert _table_columns("dunning_events") == list(dunning_storage.EVENT_COLUMNS)
    sql = (SCHEMAS / "clickhouse" / "0007_dunning.sql").read_text()
    (kinds,) = re.findall(r"kind\s+LowCardinality\(String\),\s+-- (.+)", sql)[1:]
    documented = re.findall(r"^\| `(\w+)` \| [a-z]", _section("`dunning_events`", "###"), flags=re.MULTILINE)
    assert documented == [k.strip() for k in kinds.split(",")]


def test_readme_states_are_the_engine_states():
    section = _section("Dunning policies")
    states = re.findall(r"^  \| `(\w+)` \|", section, flags=re.MULTILINE)
    assert sorted(states) == sorted([dunning_engine.OPEN, dunning_engine.PARTIALLY_PAID, dunning_engine.OVERDUE,
                                     dunning_engine.PAID, dunning_engine.UNCOLLECTIBLE, dunning_engine.VOID])  # fmt: skip


def test_readme_catalog_example_is_accepted():
    (example,) = _blocks("yaml")
    document = yaml.safe_load(example)
    assert schema_errors(CATALOG_VALIDATOR, document) == []
    catalog = parse_catalog(document)
    assert catalog.dunning.policy_for("pro").key == "standard" and catalog.dunning.policy_for("free") is None


# A real Standard Webhooks secret: whsec_ and the base64 of 24 random bytes.
README_WEBHOOK_SECRET = "whsec_FHfl2gDj6wJg1M4Q4lyzguxrvKbVLKH4"


def _readme_webhook_request() -> tuple[dict[str, str], bytes]:
    (example,) = _blocks("http")
    head, body = example.rstrip("\n").split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    return headers, body.encode()


def test_readme_webhook_example_is_signed_as_documented():
    import base64
    import hashlib
    import hmac

    from bastionary.dunning.notify import webhook

    section = _section("Webhook delivery")
    assert f"`{README_WEBHOOK_SECRET}`" in section
    key = webhook.secret_bytes(README_WEBHOOK_SECRET)
    assert len(key) >= 24  # what Standard Webhooks asks of a secret
    headers, body = _readme_webhook_request()
    event = orjson.loads(body)
    assert schema_errors(NOTICE_VALIDATOR, event["data"]) == []
    timestamp = int(headers[webhook.TIMESTAMP_HEADER])
    # Exactly the headers the code sends, in its order, for this notice, secret and time.
    assert headers == webhook.signed_headers(README_WEBHOOK_SECRET, event["id"], timestamp, body)
    assert (
        headers[webhook.ID_HEADER] == headers[webhook.IDEMPOTENCY_HEADER] == event["id"] == event["data"]["notice_id"]
    )
    assert headers["Content-Type"] == webhook.CONTENT_TYPE
    # ... and the signature is the documented formula, computed here without the module.
    signed = f"{event['id']}.{timestamp}.".encode() + body
    assert (
        headers[webhook.SIGNATURE_HEADER]
        == "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    )
    assert webhook.verify(README_WEBHOOK_SECRET, headers, body, now=timestamp + 299) == timestamp
    assert webhook.DEFAULT_TOLERANCE == 300 and "(default 300 seconds)" in section
    for header in (webhook.ID_HEADER, webhook.TIMESTAMP_HEADER, webhook.SIGNATURE_HEADER, webhook.IDEMPOTENCY_HEADER):
        assert f"**`{header}`**" in section


def test_readme_receiver_snippet_verifies_signatures():
    import base64
    import time as time_module

    from bastionary.dunning.notify import webhook

    (snippet,) = _blocks("python")
    assert not re.search(
        r"^\s*(?:import|from)\s+(?!base64|hashlib|hmac|time)\b", snippet, flags=re.MULTILINE
    )  # stdlib only
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    verify = namespace["verify"]
    _, body = _readme_webhook_request()
    notice = orjson.loads(body)["id"]
    now = int(time_module.time())
    secret, old = README_WEBHOOK_SECRET, "whsec_" + base64.b64encode(b"the-old-secret-of-24byte").decode()

    def signed(secrets, timestamp: int = now, webhook_id: str = notice) -> dict[str, str]:
        return webhook.signed_headers(secrets, webhook_id, timestamp, body)

    assert verify([secret], signed(secret), body)
    assert verify([secret], {k.upper(): v for k, v in signed(secret).items()}, body)  # names in any case
    assert verify([secret], signed([old, secret]), body)  # the sender rotating
    assert verify([old, secret], signed(old), body)  # the receiver rotating
    assert verify(["plain-utf8-secret"], signed("plain-utf8-secret"), body)
    future = signed(secret)
    future["webhook-signature"] = "v2,xyz " + future["webhook-signature"]  # unknown versions are ignored
    assert verify([secret], future, body)
    assert not verify([secret], signed(old), body)
    assert not verify([secret], signed(secret), body + b" ")
    assert not verify([secret], signed(secret) | {"webhook-id": "another-notice"}, body)
    assert not verify([secret], signed(secret) | {"webhook-timestamp": str(now + 1)}, body)
    assert not verify([secret], signed(secret, now - 301), body)
    assert not verify([secret], signed(secret, now + 301), body)
    assert not verify([secret], signed(secret) | {"webhook-signature": "v2,xyz"}, body)
    assert not verify([secret], signed(secret) | {"webhook-timestamp": "9" * 5000}, body)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not verify([secret], {k: v for k, v in signed(secret).items() if k != name}, body)


def test_readme_delivery_defaults_are_the_settings():
    from bastionary.dunning.notify.email import MESSAGE_ID_DOMAIN, SmtpConfig
    from bastionary.settings import Settings, format_iso_duration

    fields = Settings.model_fields
    webhook_section, email_section = _section("Webhook delivery"), _section("Email delivery")
    for name in ("webhook_timeout", "webhook_backoff", "webhook_backoff_cap"):
        assert (
            f"`BASTIONARY_{name.upper()}`, default `{format_iso_duration(fields[name].default)}`"
            in webhook_section.replace("\n  ", " ")
        )
    assert (
        f"`BASTIONARY_WEBHOOK_MAX_ATTEMPTS` attempts in all (default {fields['webhook_max_attempts'].default})"
        in webhook_section.replace("\n  ", " ")
    )
    assert (
        f"`BASTIONARY_SMTP_MAX_ATTEMPTS` attempts (default {fields['smtp_max_attempts'].default})"
        in email_section.replace("\n  ", " ")
    )
    assert f"(base {SmtpConfig.backoff_base:g} s, cap {SmtpConfig.backoff_cap:g} s)" in email_section.replace(
        "\n  ", " "
    )
    assert f"<notice_id@{MESSAGE_ID_DOMAIN}>" in email_section
    assert f"(default `{format_iso_duration(fields['dunning_interval'].default)}`)" in _section("Dunning policies")
