"""The billing, dunning and override parsers are total and accept only storable values.

Whatever bytes arrive, each parser returns a parsed event or raises its module's error type
(``InvalidBillingEvent``, ``InvalidOverride``) with a documented code, never anything else;
and every value it accepts, as the worker turns it into a row, fits its ClickHouse column
(see schemas/README.md, "Billing limits"). Property-based, no broker, no database:
tests/integration/test_intake_storable.py inserts such rows into real tables.
"""

from __future__ import annotations

import functools
import json
import math
import operator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bastionary.dunning.events import (
    INVOICE_FINALIZED,
    PAYMENT_TYPES,
    RESPONSE_TYPES,
    parse_invoice,
    parse_payment,
    parse_response,
    payment_row,
    receivable_row,
    response_row,
)
from bastionary.entitlements.overrides import OVERRIDE_TYPE, InvalidOverride, Override, parse_override
from bastionary.money import MINOR_UNITS
from bastionary.rating.customers import CUSTOMER_UPSERTED, customer_row, parse_customer
from bastionary.rating.events import (
    CREDIT_TYPES,
    EARLIEST,
    LATEST,
    MAX_PRIORITY,
    SUBSCRIPTION_TYPES,
    InvalidBillingEvent,
    credit_row,
    fraction_digits,
    latest_event_time,
    parse_credit,
    parse_subscription,
    subscription_row,
)
from bastionary.storage.dunning import TrailRow

PLANS = {"pro", "team"}
NOW = datetime(2026, 3, 5, 12, tzinfo=UTC)
RECEIVED = datetime(2026, 3, 5, 12, 0, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def envelope(event_type: str, data: dict, time: str = "2026-03-05T10:00:00Z") -> dict:
    return {"specversion": "1.0", "id": "evt-1", "source": "//producer.example", "type": event_type,
            "subject": "cust-1", "time": time, "data": data}  # fmt: skip


VALID = {
    "subscription": envelope("bastionary.subscription.created.v1", {
        "subscription_id": "sub-1", "customer_id": "cust-1", "plan": "pro", "start": "2026-03-01T00:00:00Z",
        "billing_anchor": "2026-03-01T00:00:00Z", "billing_email": "ap@example.com", "backfill": True}),
    "credit": envelope("bastionary.credit.granted.v1", {
        "grant_id": "g-1", "customer_id": "cust-1", "amount": "25.00", "currency": "USD", "priority": 1,
        "effective_at": "2026-03-01T00:00:00Z", "expires_at": "2026-06-01T00:00:00Z"}),
    "purchase": envelope("bastionary.credit.purchased.v1", {
        "grant_id": "pack-1", "customer_id": "cust-1", "amount": "100.00", "currency": "USD", "price_paid": "90.00",
        "payment_reference": "pi_3N8", "effective_at": "2026-03-01T00:00:00Z"}),
    "invoice": envelope(INVOICE_FINALIZED, {
        "invoice_id": "inv-1", "customer_id": "cust-1", "plan": "pro", "currency": "USD", "total": "100.000000000",
        "issued_at": "2026-02-15T00:00:00Z", "due_at": "2026-03-01T00:00:00Z", "period_start": "2026-01-15T00:00:00Z",
        "period_end": "2026-02-15T00:00:00Z", "backfill": False}),
    "payment": envelope("bastionary.payment.succeeded.v1", {
        "invoice_id": "inv-1", "payment_id": "pay-1", "customer_id": "cust-1", "amount": "40.00", "currency": "USD",
        "paid_at": "2026-03-05T09:58:12+01:00", "reason": ""}),
    "response": envelope("bastionary.dunning.promised.v1", {
        "invoice_id": "inv-1", "notice_id": "n-1", "customer_id": "cust-1", "channel": "email",
        "promised_by": "2026-03-10T00:00:00Z", "reason": "paying next week"}),
    "customer": envelope(CUSTOMER_UPSERTED, {
        "customer_id": "cust-1", "name": "Acme GmbH", "email": "ap@example.com", "tax_id": "DE123456789",
        "tax_exempt": False, "address": {"line1": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115",
        "country": "DE"}, "auto_topup": [{"currency": "EUR", "threshold": "20.00", "amount": "100"}],
        "credit_limit": {"currency": "EUR", "amount": "500.00", "alert_at": ["0.8", "0.5"]}}),
    "override": envelope(OVERRIDE_TYPE, {
        "override_id": "ovr-1", "customer_id": "cust-1", "feature": "api_calls", "effective_at": "2026-03-01T00:00:00Z",
        "expires_at": "2026-04-01T00:00:00Z", "limit_delta": "5000"}),
}  # fmt: skip
TYPES = {
    "subscription": list(SUBSCRIPTION_TYPES),
    "credit": list(CREDIT_TYPES),
    "purchase": list(CREDIT_TYPES),
    "invoice": [INVOICE_FINALIZED, "bastionary.credit.applied.v1"],
    "payment": list(PAYMENT_TYPES),
    "response": list(RESPONSE_TYPES),
    "customer": [CUSTOMER_UPSERTED],
    "override": [OVERRIDE_TYPE],
}
COMMON = {"invalid_json", "not_cloudevent", "invalid_data"}
CODES = {  # what each parser may raise: schemas/README.md, Billing and Dunning dead letters
    "subscription": COMMON | {"future_time", "unknown_type", "unknown_plan"},
    "credit": COMMON | {"future_time", "unknown_type"},
    "purchase": COMMON | {"future_time", "unknown_type"},
    "invoice": COMMON,
    "payment": COMMON | {"future_time", "unknown_type"},
    "response": COMMON | {"future_time", "unknown_type", "promise_too_far"},
    "customer": COMMON | {"future_time", "unknown_type"},
    "override": COMMON | {"future_time", "unknown_type"},
}
PARSERS = {
    "subscription": lambda value, latest: parse_subscription(value, PLANS, latest_time=latest),
    "credit": lambda value, latest: parse_credit(value, latest_time=latest),
    "purchase": lambda value, latest: parse_credit(value, latest_time=latest),
    "invoice": lambda value, latest: parse_invoice(value),
    "payment": lambda value, latest: parse_payment(value, latest_time=latest),
    "response": lambda value, latest: parse_response(value, latest_time=latest),
    "customer": lambda value, latest: parse_customer(value, latest_time=latest),
    "override": lambda value, latest: parse_override(value, latest_time=latest),
}
ERRORS = {name: InvalidOverride if name == "override" else InvalidBillingEvent for name in PARSERS}

# --- what "storable" means: the bounds of schemas/README.md, checked on the rows ---------

LENGTHS = {"id": 512, "source": 1024, "type": 256, "billing_email": 254, "reason": 2048, "channel": 64}
ID_LENGTH = 256  # every other string field of data
INT32 = (-(2**31), 2**31 - 1)


def encode(document) -> bytes:
    """JSON as a producer may write it: integers of any size, NaN, escaped lone surrogates."""
    return json.dumps(document).encode()


def storable_time(value: datetime) -> None:
    assert value.tzinfo is not None and value.utcoffset() is not None
    assert EARLIEST <= value < LATEST, value


def storable_decimal(value: Decimal, currency: str | None = None) -> None:
    assert isinstance(value, Decimal) and value.is_finite(), value
    if value != 0:
        assert value.adjusted() < 18, value
    digits = MINOR_UNITS[currency] if currency else 9
    assert fraction_digits(value) <= digits, (value, currency)


def storable_text(value: str, limit: int = ID_LENGTH) -> None:
    assert isinstance(value, str) and len(value) <= limit, len(value)
    value.encode("utf-8")  # no lone surrogates: the client encodes every String as UTF-8


def storable_row(row: tuple, text_limit: int = LENGTHS["reason"]) -> None:
    """Every cell of a row is something its kind of column holds (String lengths are checked
    per field by check_lengths)."""
    for cell in row:
        if cell is None:
            continue
        if isinstance(cell, datetime):
            storable_time(cell)
        elif isinstance(cell, Decimal):
            storable_decimal(cell)
        elif isinstance(cell, bool):
            pass
        elif isinstance(cell, int):
            assert INT32[0] <= cell <= INT32[1], cell
        elif isinstance(cell, str):
            storable_text(cell, text_limit)
        else:
            raise TypeError(f"unexpected cell {cell!r}")


def check_lengths(model) -> None:
    """The declared string fields of a parsed ``data`` (extra fields are never stored)."""
    for field in type(model).model_fields:
        value = getattr(model, field)
        if isinstance(value, str):
            storable_text(value, LENGTHS.get(field, ID_LENGTH))


def check_envelope(event, latest: datetime | None) -> None:
    assert event.id and event.source
    for field in ("id", "source", "type"):
        storable_text(getattr(event, field), LENGTHS[field])
    storable_time(event.time)
    if latest is not None:
        assert event.time <= latest


def check_accepted(name: str, result, latest: datetime | None) -> None:
    if name == "invoice":
        if result is None:
            return
        storable_decimal(result.total, result.currency)
        assert result.total >= 0 and result.currency in MINOR_UNITS
        check_lengths(result)
        storable_row(receivable_row(result, RECEIVED))
        return
    if name == "override":
        assert isinstance(result, Override)
        for text in (result.event_id, result.override_id, result.customer_id, result.feature):
            assert text
        storable_text(result.event_id, LENGTHS["id"])
        for text in (result.override_id, result.customer_id, result.feature):
            storable_text(text)
        for moment in (result.effective_at, result.expires_at):
            if moment is not None:
                storable_time(moment)
        actions = [a for a in (result.limit, result.limit_delta, result.enabled) if a is not None]
        assert len(actions) == 1
        for number in (result.limit, result.limit_delta):
            if number is not None:
                storable_decimal(number)
        return
    if name == "customer":
        event, data = result
        check_envelope(event, latest)
        row = customer_row(event, data, RECEIVED)
        storable_row(row)
        for text, limit in zip(row[:5], (ID_LENGTH, 512, LENGTHS["billing_email"], 6 * 600, 64), strict=True):
            assert len(text) <= limit, (text[:40], limit)
        assert len({rule.currency for rule in data.auto_topup}) == len(data.auto_topup) <= 16
        if data.credit_limit is not None:
            assert data.credit_limit.amount > 0 and all(0 < s < 1 for s in data.credit_limit.alert_at)
            storable_decimal(data.credit_limit.amount, data.credit_limit.currency)
        for rule in data.auto_topup:
            assert rule.amount > 0 and rule.threshold >= 0
            storable_decimal(rule.amount, rule.currency)
            storable_decimal(rule.threshold, rule.currency)
        return
    event, kind, data = result
    check_envelope(event, latest)
    check_lengths(data)
    if name == "subscription":
        assert kind in SUBSCRIPTION_TYPES.values()
        storable_row(subscription_row(event, kind, data, RECEIVED))
    elif name in ("credit", "purchase"):
        assert kind in CREDIT_TYPES.values()
        if kind == "purchased":
            assert data.price_paid is not None and data.price_paid >= 0 and data.payment_reference
            storable_decimal(data.price_paid, data.currency)
        assert 0 <= data.priority <= MAX_PRIORITY and type(data.priority) is int
        if data.amount is not None:
            assert data.amount > 0
            storable_decimal(data.amount, data.currency)
        storable_row(credit_row(event, kind, data, RECEIVED))
    elif name == "payment":
        assert kind in PAYMENT_TYPES.values()
        if data.amount is not None:
            assert data.amount > 0
            storable_decimal(data.amount, data.currency)
        storable_row(payment_row(event, kind, data, "cust-1", "USD", RECEIVED))
    elif name == "response":
        assert kind in RESPONSE_TYPES.values()
        row: TrailRow = response_row(event, kind, data, "cust-1")
        storable_row((row.event_id, row.invoice_id, row.at, row.until, row.channel, row.detail, row.action))
        if kind == "promised":
            assert data.promised_by is not None and data.promised_by > event.time


def outcome(name: str, value: bytes, latest: datetime | None = None):
    """Parse; the parser's own error (with a documented code and a bounded message) or a
    storable result. Any other exception fails the test."""
    try:
        result = PARSERS[name](value, latest)
    except ERRORS[name] as error:
        assert error.code in CODES[name], error.code
        assert 0 < len(str(error)) <= 2000, len(str(error))
        return error
    check_accepted(name, result, latest)
    return result


# --- strategies ------------------------------------------------------------------------

DROP = object()
OFFSETS = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-23, minutes=-59)),
           timezone(timedelta(hours=5, minutes=30))]  # fmt: skip
EDGE_TIMES = [
    "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z", "1970-01-01T03:00:00+05:00", "2105-12-31T23:59:59.999999Z",
    "2106-01-01T00:00:00Z", "2105-12-31T23:00:00-05:00", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59", "1900-01-01T00:00:00Z", "2299-12-31T23:59:59Z",
    "2016-12-31T23:59:60Z", "2026-03-05T10:00:00", "2026-03-05", "2026-02-30T10:00:00Z", "", "soon",
    "2026-03-05T10:00:00.123456789Z", "2026-03-05 10:00:00Z", "1772704800", "-1",
]  # fmt: skip
UNIX_TIMES = [0, -1, 1, 1772704800, 4_291_747_199, 4_291_747_200, 253_402_300_799, 253_402_300_800, 10**11, 10**13,
              10**16, 10**20, 2**63, -(2**63), 1e300, 0.5]  # fmt: skip
DECIMAL_TEXTS = [
    "1", "0", "-0", "0.000", "40.00", "40.001", "40.0010", "40.000", "1.5", "1.005", "1.0005", "0.000000001", "0.0000000001",
    "1e-9", "1e-10", "1e18", "1E+17", "999999999999999999", "999999999999999999.99", "999999999999999999.999999999",
    "1000000000000000000", "-999999999999999999.999999999", "99999999999999999999999999999.999999999", "1e999999999",
    "1e-999999999", "0E+30", "0E-30", "NaN", "-NaN", "sNaN", "Infinity", "-inf", "1_000", " 4 ", "+2", ".5", "5.",
    "0x10", "١٢", "1" * 5000, "0." + "0" * 5000 + "1",
]  # fmt: skip
EDGE_INTS = [0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**18, 10**18 - 1]

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "pro", "team", "USD", "JPY", "BHD", "usd", "XXX", "email", "api_calls", "a@b", "x@y@z",
                     "ap@example.com", "API calls", "\x00", "é", "\U0001f600"]),
    st.tuples(st.sampled_from(["x", "é", "\U0001f600", "a@"]), st.integers(min_value=200, max_value=3000)).map(
        lambda t: t[0] * t[1]),  # long strings, in characters of 1 to 4 UTF-8 bytes
)  # fmt: skip
times = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(),
              st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), st.sampled_from(OFFSETS)),
    st.sampled_from(UNIX_TIMES),
)  # fmt: skip
numbers = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(DECIMAL_TEXTS),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)
values = st.one_of(
    texts, times, numbers, st.none(), st.booleans(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)  # fmt: skip
ENVELOPE_KEYS = ["specversion", "id", "source", "type", "time", "data", "subject"]


@st.composite
def mutated(draw, name: str) -> bytes:
    """A valid event of ``name`` with 1 to 4 attributes or data fields changed or removed."""
    event = json.loads(json.dumps(VALID[name]))
    data_keys = list(event["data"]) + ["name", "tax_exempt", "address", "country", "effective_at", "expires_at", "amount", "currency", "limit", "enabled",
                                       "priority", "promised_by", "start"]  # fmt: skip
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        in_data = draw(st.booleans())
        target = event["data"] if in_data and isinstance(event.get("data"), dict) else event
        keys = data_keys if target is not event else ENVELOPE_KEYS
        key = draw(st.one_of(st.sampled_from(keys), st.text(max_size=6)))
        if key == "type" and target is event:
            value = draw(st.one_of(st.sampled_from(functools.reduce(operator.iadd, TYPES.values(), [])), values))
        else:
            value = draw(st.one_of(st.just(DROP), values))
        if value is DROP:
            target.pop(key, None)
        else:
            target[key] = value
    raw = encode(event)
    # Text no encoder writes: NaN, numbers beyond a double, lone surrogates, deep nesting.
    token = draw(st.sampled_from([None] * 24 + ["NaN", "-Infinity", "1e400", '"\\ud800"', "1" * 400,
                                               "[" * 2000 + "]" * 2000, '"\\u0000"']))  # fmt: skip
    if token is not None and b'"cust-1"' in raw:
        raw = raw.replace(b'"cust-1"', token.encode(), 1)
    return raw


latest_times = st.one_of(
    st.none(),
    st.builds(lambda ts: latest_event_time(ts, timedelta(minutes=5)),
              st.one_of(st.floats(), st.sampled_from([1772704800.0, 1772712000.0, -0.001, 4_291_747_199.0]))),
)  # fmt: skip


# --- the properties --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PARSERS))
def test_the_valid_events_parse(name):
    result = outcome(name, encode(VALID[name]), NOW)
    assert not isinstance(result, Exception), result


@pytest.mark.parametrize("name", list(PARSERS))
@PROPERTY
@given(value=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)), latest=latest_times)
def test_any_bytes_give_an_event_or_the_parser_s_error(name, value, latest):
    outcome(name, value, latest)


@pytest.mark.parametrize("name", list(PARSERS))
@PROPERTY
@given(data=st.data(), latest=latest_times)
def test_any_mutation_of_a_valid_event_is_parsed_storable_or_rejected(name, data, latest):
    outcome(name, data.draw(mutated(name)), latest)


@pytest.mark.parametrize("name", list(PARSERS))
@PROPERTY
@given(document=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
))  # fmt: skip
def test_any_json_document_is_parsed_storable_or_rejected(name, document):
    outcome(name, encode(document), NOW)


@PROPERTY
@given(timestamp=st.one_of(st.none(), st.floats(), st.integers(min_value=-(2**70), max_value=2**70)),
       skew=st.timedeltas(min_value=timedelta(0)))  # fmt: skip
def test_latest_event_time_never_raises(timestamp, skew):
    latest = latest_event_time(timestamp, skew)
    if latest is not None:
        assert math.isfinite(timestamp) and timestamp >= 0
        assert latest == datetime.fromtimestamp(timestamp, tz=UTC) + skew


@PROPERTY
@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_fraction_digits_counts_the_decimals_written_out(value):
    assume(abs(value.as_tuple().exponent) < 5000)
    written = format(value, "f")
    decimals = written.split(".")[1].rstrip("0") if "." in written else ""
    assert fraction_digits(value) == len(decimals)


# --- the bounds, one by one ------------------------------------------------------------


def with_data(name: str, _envelope: dict | None = None, **changes) -> bytes:
    event = json.loads(json.dumps(VALID[name]))
    event.update(_envelope or {})
    event["data"] = {k: v for k, v in {**event["data"], **changes}.items() if v is not DROP}
    return encode(event)


def code(name: str, value: bytes, latest: datetime | None = None) -> str | None:
    result = outcome(name, value, latest)
    return result.code if isinstance(result, Exception) else None


@pytest.mark.parametrize(
    ("moment", "accepted"),
    [("1970-01-01T00:00:00Z", True), ("1969-12-31T23:59:59.999999Z", False), ("1970-01-01T03:00:00+05:00", False),
     ("2105-12-31T23:59:59.999999Z", True), ("2106-01-01T00:00:00Z", False), ("2105-12-31T23:00:00-05:00", False),
     ("2106-01-01T01:00:00+02:00", True), ("9999-12-31T23:59:59Z", False), ("0001-01-01T00:00:00Z", False),
     (4_291_747_199, True), (4_291_747_200, False)],
)  # fmt: skip
def test_times_fall_within_1970_to_2105(moment, accepted):
    for name, field in (("subscription", "billing_anchor"), ("credit", "effective_at"), ("invoice", "due_at"),
                        ("payment", "paid_at"), ("override", "effective_at")):  # fmt: skip
        changes = {field: moment, "expires_at": DROP} if name in ("credit", "override") else {field: moment}
        assert (code(name, with_data(name, **changes)) is None) == accepted, (name, moment)
        envelope_time = code(name, with_data(name, {"time": moment}))
        assert envelope_time == (None if accepted else "not_cloudevent"), (name, moment)


def test_a_promise_past_2105_is_too_far_whatever_the_policy():
    assert code("response", with_data("response", promised_by="2106-01-01T00:00:00Z")) == "promise_too_far"
    assert code("response", with_data("response", promised_by="9999-12-31T23:59:59Z")) == "promise_too_far"
    assert code("response", with_data("response", promised_by="2105-12-31T23:59:59Z")) is None
    assert code("response", with_data("response", promised_by="1969-01-01T00:00:00Z")) == "invalid_data"
    delivered = {"type": "bastionary.dunning.delivered.v1"}
    assert code("response", with_data("response", delivered, promised_by="9999-12-31T23:59:59Z")) == "invalid_data"
    assert code("response", with_data("response", delivered, promised_by="2105-12-31T23:59:59Z")) is None


@pytest.mark.parametrize(
    ("amount", "currency", "accepted"),
    [("999999999999999999.99", "USD", True), ("1000000000000000000", "USD", False), ("1e18", "USD", False),
     ("1E+17", "USD", True), ("40.001", "USD", False), ("40.0010", "USD", False), ("40.000", "USD", True),
     ("1.5", "JPY", False), ("15", "JPY", True), ("1.005", "BHD", True), ("1.0005", "BHD", False),
     (40.5, "USD", True), (1e30, "USD", False), (2**64, "USD", False), (10**30, "USD", False), ("1e-999999999", "USD", False),
     ("1e999999999", "USD", False), ("0.00", "USD", False), ("NaN", "USD", False), ("Infinity", "USD", False)],
)  # fmt: skip
def test_amounts_have_at_most_18_integer_digits_and_the_currency_s_decimals(amount, currency, accepted):
    assert (code("credit", with_data("credit", amount=amount, currency=currency)) is None) == accepted
    assert (code("payment", with_data("payment", amount=amount, currency=currency)) is None) == accepted
    total_ok = code("invoice", with_data("invoice", total=amount, currency=currency)) is None
    assert total_ok == (accepted or amount == "0.00")


def test_an_invoice_total_may_be_zero_but_its_currency_must_be_known():
    assert code("invoice", with_data("invoice", total="0")) is None
    assert code("invoice", with_data("invoice", total="-0.01")) == "invalid_data"
    assert code("invoice", with_data("invoice", currency="XXX")) == "invalid_data"


@pytest.mark.parametrize(
    ("change", "accepted"),
    [({"limit_delta": "999999999999999999.999999999"}, True), ({"limit_delta": "-999999999999999999.999999999"}, True),
     ({"limit_delta": "1e18"}, False), ({"limit_delta": "0.000000001"}, True), ({"limit_delta": "0.0000000001"}, False),
     ({"limit_delta": DROP, "limit": "1e17"}, True), ({"limit_delta": DROP, "limit": 10**18}, False),
     ({"limit_delta": DROP, "limit": "1.0000000001"}, False)],
)  # fmt: skip
def test_override_limits_fit_decimal_38_9(change, accepted):
    assert (code("override", with_data("override", **change)) is None) == accepted


@pytest.mark.parametrize(
    ("priority", "accepted"),
    [(0, True), (MAX_PRIORITY, True), (MAX_PRIORITY + 1, False), (-1, False), (2**64, False), (True, False),
     ("5", False), (5.0, False), (None, False)],
)  # fmt: skip
def test_priority_is_an_int32_json_integer(priority, accepted):
    assert (code("credit", with_data("credit", priority=priority)) is None) == accepted


@pytest.mark.parametrize(
    ("name", "field", "limit"),
    [("subscription", "subscription_id", 256), ("subscription", "customer_id", 256), ("credit", "grant_id", 256),
     ("invoice", "invoice_id", 256), ("invoice", "plan", 256), ("payment", "payment_id", 256),
     ("payment", "reason", 2048), ("response", "notice_id", 256), ("response", "channel", 64),
     ("response", "reason", 2048), ("override", "override_id", 256)],
)  # fmt: skip
def test_data_strings_have_a_bounded_length(name, field, limit):
    assert code(name, with_data(name, **{field: "é" * limit})) is None
    assert code(name, with_data(name, **{field: "é" * (limit + 1)})) == "invalid_data"


@pytest.mark.parametrize(("field", "limit"), [("id", 512), ("source", 1024)])
def test_envelope_strings_have_a_bounded_length(field, limit):
    for name in PARSERS:
        assert code(name, with_data(name, {field: "x" * limit})) is None
        assert code(name, with_data(name, {field: "x" * (limit + 1)})) == "not_cloudevent"


def test_billing_email_is_at_most_254_characters():
    address = "a" * 240 + "@example.com"  # 252
    assert code("subscription", with_data("subscription", billing_email=address)) is None
    assert code("subscription", with_data("subscription", billing_email="aaa" + address)) == "invalid_data"


def test_a_feature_or_plan_name_of_any_length_is_bounded():
    assert code("override", with_data("override", feature="a" * 257)) == "invalid_data"
    assert code("subscription", with_data("subscription", plan="p" * 100_000)) == "invalid_data"


def test_messages_stay_short_whatever_the_input():
    huge = "t" * 100_000
    for name in PARSERS:
        for value in (with_data(name, {"type": huge}), with_data(name, **{huge: 1, "currency": huge})):
            result = outcome(name, value, NOW)
            assert not isinstance(result, Exception) or len(str(result)) < 2000


@pytest.mark.parametrize("name", [n for n in PARSERS if n != "invoice"])
def test_an_event_time_after_the_record_timestamp_plus_the_skew_is_future_time(name):
    time = datetime(2026, 3, 5, 10, tzinfo=UTC)
    value = encode(VALID[name])
    assert code(name, value, time) is None  # exactly at the limit
    assert code(name, value, time - timedelta(microseconds=1)) == "future_time"
    assert code(name, value, None) is None  # no usable record timestamp: not checked
    # The record timestamp of a far-future response used to make promised_by checks pass
    # and the insert fail.
    far = with_data(name, {"time": "2105-12-01T00:00:00Z"})
    assert code(name, far, latest_event_time(1772704800.0, timedelta(minutes=5))) == "future_time"


def test_invoices_are_not_checked_against_the_record_timestamp():
    assert code("invoice", encode(VALID["invoice"]), datetime(2000, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(None, None), (-0.001, None), (float("nan"), None), (float("inf"), None), (1e20, None), (4_291_747_200.0, None),
     (1772704800.0, datetime(2026, 3, 5, 10, 5, tzinfo=UTC)), (0.0, datetime(1970, 1, 1, 0, 5, tzinfo=UTC))],
)  # fmt: skip
def test_latest_event_time(timestamp, expected):
    assert latest_event_time(timestamp, timedelta(minutes=5)) == expected


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", '"\\ud800"', '"\\udc00x"'])
def test_numbers_and_strings_json_cannot_hold_are_invalid_json(token):
    for name in PARSERS:
        value = encode(VALID[name]).replace(b'"cust-1"', token.encode(), 1)
        assert code(name, value) == "invalid_json", (name, token)


def test_far_json_integers_never_reach_a_column():
    # orjson reads integers beyond 64 bits as floats: never a priority, always too many digits.
    assert code("credit", with_data("credit", priority=2**64)) == "invalid_data"
    value = with_data("credit", amount="AMOUNT").replace(b'"AMOUNT"', b"1" * 30)
    assert code("credit", value) == "invalid_data"


@pytest.mark.parametrize("missing", ["amount", "currency", "price_paid", "payment_reference"])
def test_a_purchase_needs_its_amount_currency_price_and_payment(missing):
    assert code("purchase", with_data("purchase", **{missing: DROP})) == "invalid_data"


@pytest.mark.parametrize(
    ("price", "accepted"), [("0", True), ("90.00", True), ("90.001", False), ("-1", False), ("NaN", False)]
)
def test_a_purchase_price_is_a_non_negative_amount_in_the_currency(price, accepted):
    assert (code("purchase", with_data("purchase", price_paid=price)) is None) == accepted


def test_a_purchase_row_keeps_its_price_and_payment_and_starts_at_the_event_time_by_default():
    event, kind, data = parse_credit(with_data("purchase", effective_at=DROP))
    row = credit_row(event, kind, data, RECEIVED)
    assert (row.kind, row.price_paid, row.payment_reference) == ("purchased", Decimal("90.00"), "pi_3N8")
    assert row.effective_at == event.time
    granted = credit_row(*parse_credit(with_data("credit", price_paid="5")), RECEIVED)
    assert (granted.price_paid, granted.payment_reference) == (None, "")  # only a purchase keeps them


@pytest.mark.parametrize(
    ("expires_at", "accepted"),
    [("2026-03-01T00:00:00Z", False), ("2026-03-05T10:00:00Z", False), ("2026-03-05T11:00:00+01:00", False),
     ("2026-03-05T10:00:00.000001Z", True), ("2027-03-05T00:00:00Z", True)],
)  # fmt: skip
def test_a_purchase_without_effective_at_must_expire_after_the_event_time(expires_at, accepted):
    """It is usable from the event's time (10:00Z): one expiring by then was accepted until
    2026-12-07, and its paid-for credit lapsed on the next invoice, never usable."""
    value = with_data("purchase", effective_at=DROP, expires_at=expires_at)
    result = outcome("purchase", value, None)
    if accepted:
        assert not isinstance(result, Exception)
    else:
        assert isinstance(result, InvalidBillingEvent) and result.code == "invalid_data"
        assert "expires_at must be after the event's time" in str(result)


def test_a_void_is_not_held_to_the_expiry_of_what_it_voids():
    # A void's expires_at is never read: a void of an expired grant naming its expiry stands.
    void = {"type": "bastionary.credit.voided.v1"}
    assert code("credit", with_data("credit", void, effective_at=DROP, expires_at="2026-03-01T00:00:00Z")) is None


@PROPERTY
@given(
    kind=st.sampled_from(["credit", "purchase"]),
    effective=st.one_of(st.none(), st.integers(-10**6, 10**6)),
    expires=st.integers(-10**6, 10**6),
)  # fmt: skip
def test_an_accepted_grant_or_purchase_is_usable_before_it_expires(kind, effective, expires):
    """Offsets in seconds from the event's time; no effective_at: usable from the event's time."""
    event_time = datetime(2026, 3, 5, 10, tzinfo=UTC)
    changes = {"expires_at": (event_time + timedelta(seconds=expires)).isoformat()}
    changes["effective_at"] = DROP if effective is None else (event_time + timedelta(seconds=effective)).isoformat()
    result = outcome(kind, with_data(kind, **changes), None)
    if kind == "credit" and effective is None:  # a grant needs its effective_at
        assert isinstance(result, InvalidBillingEvent)
        return
    assert isinstance(result, InvalidBillingEvent) == (expires <= (effective or 0))
    if not isinstance(result, Exception):
        row = credit_row(*parse_credit(with_data(kind, **changes)), RECEIVED)
        assert row.expires_at is not None and row.expires_at > row.effective_at


@pytest.mark.parametrize(
    ("rules", "accepted"),
    [
        ([{"currency": "USD", "threshold": "0", "amount": "1"}], True),
        ([{"currency": "USD", "threshold": "1", "amount": "1"}, {"currency": "EUR", "threshold": "1", "amount": "1"}], True),
        ([{"currency": "USD", "threshold": "1", "amount": "1"}] * 2, False),  # two rules for one currency
        ([{"currency": "USD", "threshold": "1", "amount": "0"}], False),
        ([{"currency": "USD", "threshold": "-1", "amount": "1"}], False),
        ([{"currency": "JPY", "threshold": "1.5", "amount": "1"}], False),
        ([{"currency": "XXX", "threshold": "1", "amount": "1"}], False),
        ([{"currency": "USD", "threshold": "1"}], False),
        ([{"currency": f"C{i}", "threshold": "1", "amount": "1"} for i in range(17)], False),
    ],
)  # fmt: skip
def test_auto_topup_rules(rules, accepted):
    assert (code("customer", with_data("customer", auto_topup=rules)) is None) == accepted
