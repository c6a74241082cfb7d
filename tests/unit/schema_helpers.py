"""What the schema and README tests share: the schemas and their validators, the verdicts
being compared, the README's sections, and the corpora and document builders that more than
one of those test files uses.

The ``test_schema_*.py`` files hold the JSON Schemas in ``schemas/`` against the code they
describe, so the two cannot drift. Every behavioural test there feeds the same input to a
schema and to the code (``UsageEvent``, ``parse_record``, ``parse_catalog``, the dunning event
parsers) and requires the same verdict. The few inputs on which the two differ on purpose are
listed next to the tests (``*_ONLY`` constants and ``*_only_*`` tests) and in the README
section "Where the schemas and the code differ"; they are excluded from the agreement corpora
and checked on their own, so a change on either side shows up. The ``test_docs_*.py`` files
hold ``schemas/README.md`` (its examples and tables) against the code.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from bastionary.catalog import CatalogError, parse_catalog
from bastionary.dunning import engine as dunning_engine
from bastionary.dunning import policy as dunning_policy
from bastionary.ingest.cloudevents import REQUIRED_ATTRIBUTES, RecordLimits, parse_record

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
README = SCHEMAS / "README.md"
DEFAULT_CATALOG = ROOT / "src" / "bastionary" / "default_catalog.yaml"

# Records are judged against a broker timestamp far after every event time used here, so
# `future_time` never fires by accident; the size limit is far above every record's size.
BROKER_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
SKEW = timedelta(minutes=5)
MAX_BYTES = 64 * 1024 * 1024


# --- validators -----------------------------------------------------------------------

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

NOTICE_SCHEMA = load_schema("dunning-notice.schema.json")
PAYMENT_SCHEMA = load_schema("payment-event.schema.json")
RESPONSE_SCHEMA = load_schema("dunning-response.schema.json")
PLAN_SCHEMA = CATALOG_SCHEMA["$defs"]["plan"]
NOTICE_VALIDATOR = validator(NOTICE_SCHEMA)
PAYMENT_VALIDATOR = validator(PAYMENT_SCHEMA)
RESPONSE_VALIDATOR = validator(RESPONSE_SCHEMA)


def field_pattern(model: type, field: str) -> str:
    """The regular expression a pydantic model puts on one of its fields."""
    return next(m.pattern for m in model.model_fields[field].metadata if getattr(m, "pattern", None))


# --- the verdicts being compared ------------------------------------------------------


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


# Every property test: reproducible (derandomized, no example database), and given time.
HYPOTHESIS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- the README -----------------------------------------------------------------------

README_TEXT = README.read_text()


def readme_blocks(language: str) -> list[str]:
    """Every fenced code block of ``language`` in the README, in order."""
    return re.findall(rf"```{language}\n(.*?)```", README_TEXT, flags=re.DOTALL)


def readme_section(heading: str, level: str = "##") -> str:
    """The text under ``heading`` up to the next heading of that level (or the next ``##``)."""
    return README_TEXT.split(f"\n{level} {heading}\n", 1)[1].split(f"\n{level} ", 1)[0].split("\n## ", 1)[0]


def readme_table_keys(heading: str) -> list[str]:
    """The `code` in the first column of every table row in the README section ``heading``."""
    section = README_TEXT.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


# --- usage events: a corpus -----------------------------------------------------------

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


# --- random events --------------------------------------------------------------------

# Each attribute absent, well-formed, or any JSON value at all.
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
    # covered by BOTH_REJECT_TIMES; the other lax forms by WORKER_ONLY_TIMES in
    # test_schema_usage_event.py)
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


# --- usage events in binary mode ------------------------------------------------------


def binary_event(value: bytes, headers: list[tuple[str, bytes]]) -> dict:
    """The event binary mode describes: every ce_ header an attribute, the value its data."""
    return {**{k[3:]: v.decode() for k, v in headers if k.startswith("ce_")}, "data": orjson.loads(value)}


# --- catalog documents: meters, plans, prices, amounts, durations ---------------------


def meter(**overrides: object) -> dict:
    base = {"key": "llm_tokens", "event_type": "llm.completion", "aggregation": "SUM", "value_property": "$.tokens"}
    merged = {**base, **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


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
# strings written plainly; the code's extra leniency is listed in PLAN_CODE_ONLY_ACCEPTS, test_schema_plans.py).
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


def _decimal_value(value: str, check) -> bool:
    try:
        return check(Decimal(value)) and Decimal(value).is_finite()
    except ArithmeticError:
        return False


def negative_zero(text: str) -> bool:
    return text.strip().startswith("-") and _decimal_value(text, lambda d: d == 0)


# Decimal strings: ASCII only, no blanks or underscores (code-only spellings), no negative zero.
DECIMAL_TEXT = st.text(alphabet="0123456789.+-eE", max_size=7).filter(lambda s: not negative_zero(s))


# --- dunning: policies, notices, payments and responses -------------------------------

# The email templates shipped with the package, as the schema and README name them.
TEMPLATE_ORDER = ["friendly", "firm", "final_notice", "suspend", "mark_uncollectible"]


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
