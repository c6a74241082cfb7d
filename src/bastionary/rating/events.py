"""The billing input contract: subscription and credit-grant CloudEvents.

Each record on ``billing.subscriptions`` / ``billing.credit-grants`` is one CloudEvent
(structured JSON), keyed by customer id. Invalid ones go to ``billing.dlq`` with a reason.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from bastionary.rating.money import MINOR_UNITS

SUBSCRIPTION_TYPES = {
    "bastionary.subscription.created.v1": "created",
    "bastionary.subscription.changed.v1": "changed",
    "bastionary.subscription.canceled.v1": "canceled",
}
CREDIT_TYPES = {"bastionary.credit.granted.v1": "granted", "bastionary.credit.voided.v1": "voided"}


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class SubscriptionData(_Data):
    subscription_id: StrictStr = Field(min_length=1)
    customer_id: StrictStr = Field(min_length=1)
    plan: StrictStr | None = None
    start: AwareDatetime | None = None
    billing_anchor: AwareDatetime | None = None
    effective_at: AwareDatetime | None = None
    billing_email: StrictStr | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")  # where dunning email goes


class CreditGrantData(_Data):
    grant_id: StrictStr = Field(min_length=1)
    customer_id: StrictStr = Field(min_length=1)
    amount: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)
    currency: StrictStr | None = None
    priority: int = Field(default=100, ge=0)
    effective_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _currency(self) -> "CreditGrantData":
        if self.currency is not None and self.currency not in MINOR_UNITS:
            raise ValueError(f"unknown currency {self.currency!r}")
        return self


class BillingEvent(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: StrictStr = Field(min_length=1)
    source: StrictStr = Field(min_length=1)
    type: StrictStr
    time: AwareDatetime
    data: dict


class InvalidBillingEvent(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def parse_subscription(value: bytes, known_plans: set[str]) -> tuple[BillingEvent, str, SubscriptionData]:
    event = parse_envelope(value)
    kind = SUBSCRIPTION_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a subscription event type: {event.type}")
    data = parse_data(SubscriptionData, event)
    if kind in ("created", "changed") and (data.plan is None or data.plan not in known_plans):
        raise InvalidBillingEvent("unknown_plan", f"plan {data.plan!r} is not in the catalog")
    if kind == "created" and data.start is None:
        raise InvalidBillingEvent("invalid_data", "created needs start")
    if kind in ("changed", "canceled") and data.effective_at is None:
        raise InvalidBillingEvent("invalid_data", f"{kind} needs effective_at")
    return event, kind, data


def parse_credit(value: bytes) -> tuple[BillingEvent, str, CreditGrantData]:
    event = parse_envelope(value)
    kind = CREDIT_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a credit event type: {event.type}")
    data = parse_data(CreditGrantData, event)
    if kind == "granted" and (data.amount is None or data.currency is None or data.effective_at is None):
        raise InvalidBillingEvent("invalid_data", "granted needs amount, currency and effective_at")
    if data.expires_at is not None and data.effective_at is not None and data.expires_at <= data.effective_at:
        raise InvalidBillingEvent("invalid_data", "expires_at must be after effective_at")
    return event, kind, data


def parse_envelope(value: bytes) -> BillingEvent:
    try:
        return BillingEvent.model_validate(orjson.loads(value))
    except orjson.JSONDecodeError as exc:
        raise InvalidBillingEvent("invalid_json", f"value is not JSON: {exc}") from None
    except ValidationError as exc:
        raise InvalidBillingEvent("not_cloudevent", _errors(exc)) from None


def parse_data(model, event: BillingEvent):
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidBillingEvent("invalid_data", _errors(exc)) from None


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)[:5])


def event_time(moment: datetime | None, fallback: datetime) -> datetime:
    return moment or fallback
