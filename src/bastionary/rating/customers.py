"""The customer record: who an invoice is addressed to, from ``billing.customers``.

A ``bastionary.customer.upserted.v1`` event carries the whole record (an upsert replaces
every field; a field left out is empty afterwards). The newest event by its ``time`` wins,
so a late redelivery of an older record never overwrites a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from bastionary.money import format_money, plain_decimal
from bastionary.rating.events import (
    MAX_EMAIL_LENGTH,
    Amount,
    BillingEvent,
    Id,
    InvalidBillingEvent,
    check_currency,
    parse_data,
    parse_envelope,
    preview,
)
from bastionary.rating.spend import CreditLimit
from bastionary.rating.tax import TaxProfile

CUSTOMER_UPSERTED = "bastionary.customer.upserted.v1"
MAX_FIELD_LENGTH = 512
Field512 = Annotated[StrictStr, Field(max_length=MAX_FIELD_LENGTH)]


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    line1: Field512 = ""
    line2: Field512 = ""
    city: Field512 = ""
    postal_code: Annotated[StrictStr, Field(max_length=32)] = ""
    region: Field512 = ""
    country: Annotated[StrictStr, Field(pattern=r"^([A-Z]{2})?$")] = ""  # ISO 3166-1 alpha-2


class AutoTopup(BaseModel):
    """Ask for ``amount`` of paid credit (``bastionary.credit.topup_requested.v1``) whenever
    an invoice's draws take the customer's ``currency`` balance below ``threshold``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: StrictStr
    threshold: Amount = Field(ge=0)
    amount: Amount = Field(gt=0)

    @model_validator(mode="after")
    def _currency(self) -> AutoTopup:
        check_currency(self.currency, self.threshold, self.amount)
        return self


class CustomerData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    customer_id: Id
    name: Field512 = ""
    email: Annotated[StrictStr, Field(max_length=MAX_EMAIL_LENGTH, pattern=r"^([^@\s]+@[^@\s]+)?$")] = ""
    address: Address = Address()
    tax_id: Annotated[StrictStr, Field(max_length=64)] = ""
    tax_exempt: StrictBool = False
    auto_topup: Annotated[list[AutoTopup], Field(max_length=16)] = []  # at most one rule per currency
    credit_limit: CreditLimit | None = None  # unbilled plus unpaid charge allowed (rating/spend.py)

    @model_validator(mode="after")
    def _one_rule_per_currency(self) -> CustomerData:
        currencies = [rule.currency for rule in self.auto_topup]
        if len(set(currencies)) != len(currencies):
            raise ValueError("auto_topup has more than one rule for a currency")
        return self


class CustomerRow(NamedTuple):
    """A row of ``customers``."""

    customer_id: str
    name: str
    email: str
    address: str  # JSON
    tax_id: str
    tax_exempt: bool
    event_id: str
    updated_at: datetime
    received_at: datetime
    auto_topup: str  # JSON array of {currency, threshold, amount}, amounts as decimal strings
    credit_limit: str  # JSON {currency, amount, alert_at}, or '' for none


def parse_customer(value: bytes, *, latest_time: datetime | None = None) -> tuple[BillingEvent, CustomerData]:
    event = parse_envelope(value, latest_time)
    if event.type != CUSTOMER_UPSERTED:
        raise InvalidBillingEvent("unknown_type", f"not a customer event type: {preview(event.type)}")
    return event, parse_data(CustomerData, event)


def customer_row(envelope: BillingEvent, data: CustomerData, received: datetime) -> CustomerRow:
    return CustomerRow(
        data.customer_id,
        data.name,
        data.email,
        orjson.dumps(data.address.model_dump()).decode(),
        data.tax_id,
        data.tax_exempt,
        envelope.id,
        envelope.time,
        received,
        orjson.dumps([_topup_json(rule) for rule in data.auto_topup]).decode(),
        _credit_limit_json(data.credit_limit),
    )


# The columns are answered as stored (GET /v1/customers/{id}), so amounts are written as every
# report writes them, at the currency's precision, not as the event spelled them (1e2, 50).


def _topup_json(rule: AutoTopup) -> dict[str, str]:
    return {
        "currency": rule.currency,
        "threshold": format_money(rule.threshold, rule.currency),
        "amount": format_money(rule.amount, rule.currency),
    }


def _credit_limit_json(limit: CreditLimit | None) -> str:
    if limit is None:
        return ""
    return orjson.dumps(
        {
            "currency": limit.currency,
            "amount": format_money(limit.amount, limit.currency),
            "alert_at": [plain_decimal(share) for share in limit.alert_at],
        }
    ).decode()


def topup_rules(text: str) -> dict[str, tuple[Decimal, Decimal]]:
    """A stored ``auto_topup`` column: currency -> (threshold, amount)."""
    return {rule["currency"]: (Decimal(rule["threshold"]), Decimal(rule["amount"])) for rule in orjson.loads(text)}


@dataclass(frozen=True)
class CustomerTerms:
    """What rating takes from a customer's record, as it stands when an invoice is rated."""

    bill_to: dict[str, Any] = field(default_factory=dict)  # name, email, address, tax_id: printed on the invoice
    tax: TaxProfile = field(default_factory=TaxProfile)
    topups: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # currency -> (threshold, amount)
    credit_limit: CreditLimit | None = None


def customer_terms(
    name: str, email: str, address: str, tax_id: str, exempt: bool, topups: str, limit: str = ""
) -> CustomerTerms:
    """The terms of a stored ``customers`` row."""
    where = orjson.loads(address)
    bill_to = {"name": name, "email": email, "address": where, "tax_id": tax_id}
    credit_limit = CreditLimit.model_validate_json(limit) if limit else None
    return CustomerTerms(bill_to, TaxProfile(where.get("country", ""), bool(exempt)), topup_rules(topups), credit_limit)
