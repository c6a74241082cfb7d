"""From the forty-fifth session's money review; each test failed before its fix.

The committed billing input schemas bound amounts as the parsers do: a negative, zero or
non-numeric ``amount`` fails the schema as it fails the worker (invalid_data), and the schema
and the models agree on amounts, but for spellings only the code takes (an exponent, blanks,
``_``, other digits), a negative zero, and a JSON number's decimals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from bastionary.credits.balances import balances
from bastionary.credits.ledger import allocate
from bastionary.rating.credit_notes import CreditNoteRequest
from bastionary.rating.customers import CustomerData
from bastionary.rating.events import CreditGrantData
from bastionary.storage.billing import ClickHouseBillingStore

DIRECTORY = Path(__file__).resolve().parents[2] / "schemas" / "billing"


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((DIRECTORY / f"{name}.schema.json").read_text()))


GRANT, NOTE, CUSTOMER = _validator("credit-grant"), _validator("credit-note-request"), _validator("customer")


def _event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    envelope = {"specversion": "1.0", "id": "e1", "source": "s", "time": "2026-01-01T00:00:00Z"}
    return {**envelope, "type": event_type, "data": data}


def _grant(field: str, value: Any) -> dict[str, Any]:
    return {"grant_id": "g", "customer_id": "c", field: value}


def _note(value: Any) -> dict[str, Any]:
    return {"credit_note_id": "n", "invoice_id": "i", "customer_id": "c", "amount": value}


def _note_line(value: Any) -> dict[str, Any]:
    return {
        "credit_note_id": "n",
        "invoice_id": "i",
        "customer_id": "c",
        "lines": [{"description": "d", "amount": value}],
    }


def _share(value: Any) -> dict[str, Any]:
    return {"customer_id": "c", "credit_limit": {"currency": "USD", "amount": "10", "alert_at": [value]}}


# Where an amount goes: the schema, the event type, the data around it, and the model of the data.
POSITIVE = {
    "grant amount": (GRANT, "bastionary.credit.granted.v1", lambda v: _grant("amount", v), CreditGrantData),
    "note amount": (NOTE, "bastionary.credit_note.requested.v1", _note, CreditNoteRequest),
    "note line amount": (NOTE, "bastionary.credit_note.requested.v1", _note_line, CreditNoteRequest),
}
NON_NEGATIVE = {
    "price paid": (GRANT, "bastionary.credit.purchased.v1", lambda v: _grant("price_paid", v), CreditGrantData),
}
SHARE = {"alert_at": (CUSTOMER, "bastionary.customer.upserted.v1", _share, CustomerData)}
PLACES = {**POSITIVE, **NON_NEGATIVE, **SHARE}


def schema_accepts(place: str, value: Any) -> bool:
    validator, event_type, data, _ = PLACES[place]
    return validator.is_valid(_event(event_type, data(value)))


def model_error(place: str, value: Any) -> str | None:
    _, _, data, model = PLACES[place]
    typed: type[BaseModel] = model
    try:
        typed.model_validate(data(value))
    except ValidationError as exc:
        return str(exc)
    return None


HOSTILE = [-5, "-5.00", "ten", 0, "0", "0.00", -0.01, "-0.01", "", " ", ".", "+", "NaN", "Infinity", "1e999",
           10**18, "1000000000000000000", "1.0000000001", True, [], {}]  # fmt: skip


@pytest.mark.parametrize("place", sorted(POSITIVE))
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_amount_fails_the_committed_schema_as_it_fails_the_worker(place, value):
    assert model_error(place, value) is not None
    assert not schema_accepts(place, value)


@pytest.mark.parametrize("value", [v for v in HOSTILE if v not in (0, "0", "0.00")], ids=repr)
def test_a_hostile_price_paid_fails_the_committed_schema(value):
    assert model_error("price paid", value) is not None
    assert not schema_accepts("price paid", value)


@pytest.mark.parametrize("value", [0, "0", "0.00", "90", 90, "+90.50", ".5", "5.", "999999999999999999.999999999"])
def test_a_price_paid_of_zero_or_more_fits_both(value):
    assert model_error("price paid", value) is None
    assert schema_accepts("price paid", value)


def _negative_zero(value: Any) -> bool:
    try:
        return isinstance(value, str) and value.startswith("-") and Decimal(value) == 0
    except ArithmeticError:
        return False


# Plain decimals, as a producer writes them: the schema says exactly what the models take.
PLAIN = st.builds(
    lambda sign, whole, point, fraction: f"{sign}{whole}{point}{fraction}",
    st.sampled_from(["", "+", "-"]),
    st.text("0123456789", max_size=21) | st.text("0", max_size=21),
    st.sampled_from(["", "."]),
    st.text("0123456789", max_size=12) | st.text("0", max_size=12).map(lambda zeros: "5" + zeros),
)


@settings(max_examples=400, derandomize=True, database=None)
@given(place=st.sampled_from(sorted(PLACES)), value=PLAIN | st.integers(-(10**19), 10**19))
def test_schema_and_models_agree_on_plain_amounts(place, value):
    accepted = model_error(place, value) is None
    # A negative zero where 0 is allowed: the models take "-0.00", the schema asks for no sign.
    if accepted and place in NON_NEGATIVE and _negative_zero(value):
        return
    assert schema_accepts(place, value) == accepted


@settings(max_examples=400, derandomize=True, database=None)
@given(
    place=st.sampled_from(sorted(PLACES)),
    value=st.text(max_size=24) | st.text("0123456789.+-eE_ ", max_size=24) | st.floats(allow_nan=False),
)
def test_what_the_schema_accepts_the_models_accept(place, value):
    if not schema_accepts(place, value):
        return
    error = model_error(place, value)
    # A JSON number's decimals are the one bound JSON Schema cannot state exactly.
    assert error is None or (isinstance(value, float) and "decimal places" in error), error


def test_a_float_amount_within_the_decimals_fits_both():
    assert Decimal("0.1") == CreditGrantData.model_validate(_grant("amount", 0.1)).amount
    assert schema_accepts("grant amount", 0.1)


def test_a_second_void_does_not_make_a_voided_grant_usable_again():
    """Voided on Feb 10, then again on Mar 15 (a retried void, effective at its own time): the
    store read the last void, so an invoice for a period ending Mar 1 drew from the grant."""

    def at(month: int, day: int) -> datetime:
        return datetime(2024, month, day, tzinfo=UTC)

    rows = [
        ("granted", "g", "c", Decimal("40.00"), "USD", 100, at(1, 1), None),
        ("voided", "g", "c", Decimal(0), "", 100, at(2, 10), None),
        ("voided", "g", "c", Decimal(0), "", 100, at(3, 15), None),
    ]
    client = SimpleNamespace(query=lambda sql, parameters=None: SimpleNamespace(result_rows=rows))
    grants, drawn = ClickHouseBillingStore(client).grants_as_of(None)  # type: ignore[arg-type]
    assert grants["c"][0].voided_at == at(2, 10)
    assert [(b.status, b.remaining) for b in balances(grants["c"], drawn, at(3, 1))] == [("voided", Decimal(0))]
    assert allocate(grants["c"], drawn, Decimal("30.00"), "USD", at(3, 1)) == []


def test_the_openapi_inputs_bound_amounts_as_the_billing_schemas_do():
    """POST /v1/credit-grants, /v1/credit-purchases and /v1/credit-notes took any signed decimal
    string in openapi.yaml (Decimal), while the worker refuses a negative or zero amount."""
    import yaml

    from bastionary.rating.contracts import AMOUNT_LIMIT, NON_NEGATIVE_AMOUNT, POSITIVE_AMOUNT

    with open(DIRECTORY.parent / "openapi.yaml") as f:
        schemas = yaml.safe_load(f)["components"]["schemas"]
    positive, non_negative = schemas["PositiveAmount"]["anyOf"], schemas["NonNegativeAmount"]["anyOf"]
    assert positive == [
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": AMOUNT_LIMIT},
        {"type": "string", "pattern": POSITIVE_AMOUNT},
    ]
    assert non_negative == [
        {"type": "number", "minimum": 0, "exclusiveMaximum": AMOUNT_LIMIT},
        {"type": "string", "pattern": NON_NEGATIVE_AMOUNT},
    ]
    ref = "#/components/schemas/"
    note = schemas["CreditNoteInput"]["properties"]
    assert note["amount"]["$ref"] == ref + "PositiveAmount"
    assert note["lines"]["items"]["properties"]["amount"]["$ref"] == ref + "PositiveAmount"
    assert schemas["CreditGrantInput"]["properties"]["amount"]["$ref"] == ref + "PositiveAmount"
    purchase = schemas["CreditPurchaseInput"]["properties"]
    assert purchase["amount"]["$ref"] == ref + "PositiveAmount"
    assert purchase["price_paid"]["$ref"] == ref + "NonNegativeAmount"
