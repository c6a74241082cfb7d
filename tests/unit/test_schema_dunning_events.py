"""The dunning schemas on the wire: notices (``dunning-notice.schema.json``) as the engine
builds them, and ``billing.payments`` events and dunning responses
(``payment-event.schema.json``, ``dunning-response.schema.json``) against ``parse_payment`` and
``parse_response``: the same verdict on corpora of events (except the rules and spellings only
the code knows, listed here and in the README), and the dead-letter reasons of payments."""

from __future__ import annotations

import orjson
import pytest

from bastionary.dunning import dunner as dunning_dunner
from bastionary.dunning import engine as dunning_engine
from bastionary.dunning import events as dunning_events
from bastionary.dunning import policy as dunning_policy
from bastionary.money import MINOR_UNITS
from bastionary.rating.events import InvalidBillingEvent
from tests.unit.schema_helpers import (
    MISSING,
    NOTICE_SAMPLES,
    NOTICE_SCHEMA,
    NOTICE_VALIDATOR,
    PAYMENT,
    PAYMENT_SCHEMA,
    PAYMENT_VALIDATOR,
    POSITIVE_VALUES,
    RESPONSE,
    RESPONSE_SCHEMA,
    RESPONSE_VALIDATOR,
    field_pattern,
    schema_errors,
    wire,
)

# --- notices --------------------------------------------------------------------------


def test_notice_samples_cover_every_action():
    assert {n["action"] for n in NOTICE_SAMPLES} == {a.value for a in dunning_policy.Action}


@pytest.mark.parametrize("notice", NOTICE_SAMPLES, ids=lambda n: f"step {n['step']} {n['action']}")
def test_notices_built_by_the_engine_validate(notice):
    assert schema_errors(NOTICE_VALIDATOR, wire(notice)) == []
    assert list(NOTICE_SCHEMA["properties"]) == list(notice) == NOTICE_SCHEMA["required"]


def test_notice_schema_enums_match_the_policy():
    assert NOTICE_SCHEMA["properties"]["action"]["enum"] == [a.value for a in dunning_policy.Action]
    assert NOTICE_SCHEMA["properties"]["channels"]["items"]["enum"] == list(dunning_policy.CHANNELS)
    assert NOTICE_SCHEMA["properties"]["policy"]["pattern"] == field_pattern(dunning_policy.Policy, "key")


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


# --- payments and responses -----------------------------------------------------------


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
    for currency, customer, code in (
        (None, None, "unknown_invoice"),
        ("EUR", None, "wrong_currency"),
        ("USD", "cust-7", "customer_mismatch"),  # another customer's invoice: it would pay it
    ):
        with pytest.raises(InvalidBillingEvent) as caught:
            dunning_events.check_against_invoice(kind, data, currency, customer)
        assert caught.value.code == code
    dunning_events.check_against_invoice(kind, data, "USD")
    dunning_events.check_against_invoice(kind, data, "USD", "cust-42")
    anyone = data.model_copy(update={"customer_id": None})  # a payment may name its invoice only
    dunning_events.check_against_invoice(kind, anyone, "USD", "cust-7")
