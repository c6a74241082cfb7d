"""The billing input contract: subscription and credit-grant CloudEvents.

Each record on ``billing.subscriptions`` / ``billing.credit-grants`` is one CloudEvent
(structured JSON), keyed by customer id. Invalid ones go to ``billing.dlq`` with a reason.

The parsers here (and those built on :func:`parse_envelope`: payments, responses, invoices,
entitlement overrides) are total: whatever bytes arrive, they return a parsed event or raise
:class:`InvalidBillingEvent` with a code, never anything else. And everything they accept can
be stored: times fall within :data:`EARLIEST` .. :data:`LATEST`, amounts and limits fit
``Decimal(38, 9)`` exactly (at most :data:`MAX_INTEGER_DIGITS` integer digits, and no more
decimals than the currency has, or than 9 without a currency), ids and texts have a bounded
length. schemas/README.md (Billing limits) lists the bounds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from bastionary.money import MINOR_UNITS
from bastionary.rating.plans import Plan
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.rating.subscriptions import SubscriptionEvent, plan_change_refusal, subscription_owner

SUBSCRIPTION_TYPES = {
    "bastionary.subscription.created.v1": "created",
    "bastionary.subscription.changed.v1": "changed",
    "bastionary.subscription.canceled.v1": "canceled",
}
CREDIT_TYPES = {
    "bastionary.credit.granted.v1": "granted",
    "bastionary.credit.purchased.v1": "purchased",
    "bastionary.credit.voided.v1": "voided",
}

# The storable range of every billing time: the usage range (ClickHouse DateTime, which the
# rollup windows use), well inside DateTime64's 1900 .. 2299. LATEST itself is excluded.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2106, 1, 1, tzinfo=UTC)
# Amounts and limits are Decimal(38, 9) columns; like meter values, at most 18 integer digits
# (sums of many still fit) and at most 9 decimals (what the column keeps; fewer for a currency).
MAX_INTEGER_DIGITS = 18
MAX_FRACTION_DIGITS = 9
MAX_PRIORITY = 2**31 - 1  # credit_ledger.priority is Int32
MAX_EVENT_ID_LENGTH = 512  # the CloudEvent's id, as for usage events
MAX_SOURCE_LENGTH = 1024
MAX_TYPE_LENGTH = 256
MAX_ID_LENGTH = 256  # ids and keys in data: customer, subscription, grant, invoice, payment, plan...
MAX_EMAIL_LENGTH = 254  # the longest forward path SMTP carries
MAX_TEXT_LENGTH = 2048  # free text: a payment's or a response's reason
MAX_CHANNEL_LENGTH = 64


def _storable_time(value: datetime) -> datetime:
    # Aware datetimes compare as UTC without overflowing, whatever their offsets.
    if not EARLIEST <= value < LATEST:
        raise ValueError("must fall within 1970-01-01 .. 2105-12-31 UTC")
    return value


def time_in_range(value: datetime) -> bool:
    return EARLIEST <= value < LATEST


# A date-time with an offset, within EARLIEST .. LATEST.
BillingTime = Annotated[AwareDatetime, AfterValidator(_storable_time)]
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
OptionalId = Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH)]  # may be empty
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_LENGTH)]


def fraction_digits(value: Decimal) -> int:
    """Decimals ``value`` needs, trailing zeros aside (``1.50`` needs 1), computed exactly:
    ``Decimal.normalize`` would round to the context's 28 digits first."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or exponent >= 0:
        return 0
    zeros = 0
    for digit in reversed(digits):
        if digit != 0 or zeros == -exponent:
            break
        zeros += 1
    return -exponent - zeros


def amount_problem(value: Decimal, currency: str | None = None) -> str | None:
    """Why ``value`` cannot be stored exactly as an amount (in ``currency``), or None."""
    if not value.is_finite():
        return "must be a finite number"
    if value != 0 and value.adjusted() >= MAX_INTEGER_DIGITS:
        return f"must be below 10^{MAX_INTEGER_DIGITS} in magnitude (at most {MAX_INTEGER_DIGITS} integer digits)"
    allowed = MINOR_UNITS.get(currency, MAX_FRACTION_DIGITS) if currency is not None else MAX_FRACTION_DIGITS
    needed = fraction_digits(value)
    if needed > allowed:
        unit = f"{currency} has {allowed}" if currency in MINOR_UNITS else f"at most {allowed}"
        return f"has {needed} decimal place{'s' if needed != 1 else ''}; {unit}"
    return None


def _storable_decimal(value: Decimal) -> Decimal:
    problem = amount_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A finite Decimal(38, 9) value with at most 18 integer digits; the currency's decimals are
# checked by the model that knows the currency.
Amount = Annotated[Decimal, Field(allow_inf_nan=False), AfterValidator(_storable_decimal)]


def preview(value: Any, limit: int = 80) -> str:
    """A bounded repr for messages: a hostile value must not make a huge dead-letter header."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_currency(currency: str | None, *amounts: Decimal | None) -> None:
    """Raise ValueError for an unknown currency, or an amount with more decimals than it has."""
    if currency is not None and currency not in MINOR_UNITS:
        raise ValueError(f"unknown currency {preview(currency)}")
    for amount in amounts:
        if amount is not None and (problem := amount_problem(amount, currency)) is not None:
            raise ValueError(f"amount {preview(str(amount), 40)} {problem}")


# What a plain address may hold: no display name, comment, group, list or quoting, and a
# domain without empty labels (also the JSON schema's pattern).
PLAIN_ADDRESS_PATTERN = (
    r'^[^@\s<>()\[\],;:"\\\x00-\x1f\x7f]+@[^@\s<>()\[\],;:"\\\x00-\x1f\x7f.]+'
    r'(\.[^@\s<>()\[\],;:"\\\x00-\x1f\x7f.]+)*$'
)
_PLAIN_ADDRESS = re.compile(PLAIN_ADDRESS_PATTERN)


def is_one_plain_address(value: str) -> bool:
    """Whether dunning can send to ``value``: it sets it as the ``To`` header and sends only if
    that reads back as exactly this one address (``build_message`` in dunning/notify/email.py,
    which this layer may not import). Checked at intake, since the latest non-empty address
    counts: one that dunning refuses would replace a working one."""
    if _PLAIN_ADDRESS.fullmatch(value) is None:
        return False
    message = EmailMessage()
    try:
        message["To"] = value
        addresses = message["To"].addresses
    except Exception:  # the stdlib's header parser is not total on hostile text
        return False
    return len(addresses) == 1 and addresses[0].addr_spec == value


def _plain_address(value: str) -> str:
    if not is_one_plain_address(value):
        raise ValueError("billing_email is not one plain address")
    return value


BillingEmail = Annotated[
    StrictStr,
    Field(max_length=MAX_EMAIL_LENGTH, json_schema_extra={"pattern": PLAIN_ADDRESS_PATTERN}),
    AfterValidator(_plain_address),
]


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class SubscriptionData(_Data):
    subscription_id: Id
    customer_id: Id
    plan: Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH)] | None = None
    start: BillingTime | None = None
    billing_anchor: BillingTime | None = None
    effective_at: BillingTime | None = None
    billing_email: BillingEmail | None = None  # where dunning email goes
    # On a created event: rate the periods that ended before the event was received (rater.py).
    backfill: StrictBool = False


class CreditGrantData(_Data):
    grant_id: Id
    customer_id: Id
    amount: Amount | None = Field(default=None, gt=0)
    currency: StrictStr | None = None
    priority: StrictInt = Field(default=100, ge=0, le=MAX_PRIORITY)
    effective_at: BillingTime | None = None
    expires_at: BillingTime | None = None
    # A purchase (paid credit): what the customer paid for ``amount`` of credit, in the same
    # currency (less than ``amount`` for a discounted pack), and the payment it came from.
    price_paid: Amount | None = Field(default=None, ge=0)
    payment_reference: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)] | None = None

    @model_validator(mode="after")
    def _currency(self) -> CreditGrantData:
        check_currency(self.currency, self.amount, self.price_paid)
        return self


class BillingEvent(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: StrictStr = Field(min_length=1, max_length=MAX_EVENT_ID_LENGTH)
    source: StrictStr = Field(min_length=1, max_length=MAX_SOURCE_LENGTH)
    type: StrictStr = Field(max_length=MAX_TYPE_LENGTH)
    time: BillingTime
    data: dict[str, Any]  # the JSON object a parse_data model validates


class InvalidBillingEvent(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def latest_event_time(record_timestamp: float | None, max_future_skew: timedelta) -> datetime | None:
    """The latest ``time`` an event may carry in a record with this broker timestamp (seconds,
    as Faust gives it): the timestamp plus ``max_future_skew``. None when the record has no
    usable timestamp (Kafka's -1, or past any date): its events' times are then not checked."""
    if record_timestamp is None or not 0 <= record_timestamp < LATEST.timestamp():
        return None
    try:
        return datetime.fromtimestamp(record_timestamp, tz=UTC) + max_future_skew
    except OverflowError:  # a skew reaching past year 9999: no time can be later
        return None


def parse_subscription(
    value: bytes, known_plans: set[str], *, latest_time: datetime | None = None
) -> tuple[BillingEvent, str, SubscriptionData]:
    event = parse_envelope(value, latest_time)
    kind = SUBSCRIPTION_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a subscription event type: {preview(event.type)}")
    data = parse_data(SubscriptionData, event)
    if kind in ("created", "changed") and (data.plan is None or data.plan not in known_plans):
        raise InvalidBillingEvent("unknown_plan", f"plan {preview(data.plan)} is not in the catalog")
    if kind == "created" and data.start is None:
        raise InvalidBillingEvent("invalid_data", "created needs start")
    if kind in ("changed", "canceled") and data.effective_at is None:
        raise InvalidBillingEvent("invalid_data", f"{kind} needs effective_at")
    return event, kind, data


def check_owner(data: SubscriptionData, stored: Iterable[SubscriptionEvent]) -> None:
    """Raise ``customer_mismatch`` for a parsed event naming another customer than the one
    its subscription was created for, given the subscription's stored events
    (:func:`bastionary.rating.subscriptions.subscription_owner`). The message does not name
    the owner: the event's sender may be a key scoped to another customer."""
    owner = subscription_owner(stored)
    if owner is not None and owner != data.customer_id:
        raise InvalidBillingEvent(
            "customer_mismatch",
            f"subscription {preview(data.subscription_id)} is not customer {preview(data.customer_id)}'s",
        )


def check_plan_change(data: SubscriptionData, stored: Iterable[SubscriptionEvent], plans: Mapping[str, Plan]) -> None:
    """Raise ``incompatible_plan`` for a parsed ``changed`` event to a plan of another
    currency or billing interval than its subscription's, given the subscription's stored
    events (:func:`bastionary.rating.subscriptions.plan_change_refusal`)."""
    new = plans.get(data.plan or "")
    problem = plan_change_refusal(new, stored, plans) if new is not None else None
    if problem is not None:
        raise InvalidBillingEvent("incompatible_plan", f"subscription {preview(data.subscription_id)}: {problem}")


def check_grant_owner(data: CreditGrantData, owner: str | None) -> None:
    """Raise ``customer_mismatch`` for a grant, purchase or void naming another customer than
    the one whose grant holds its id (``owner``: the first stored grant's customer, None before
    one). Grant ids are the producer's: without this, a key scoped to one customer could void
    another's grant, or take its id, by naming itself in the body."""
    if owner is not None and owner != data.customer_id:
        raise InvalidBillingEvent(
            "customer_mismatch", f"grant {preview(data.grant_id)} is not customer {preview(data.customer_id)}'s"
        )


# Ledger times are DateTime64(3): a retry's times read back to the millisecond only.
_STORED_TIME_RESOLUTION = timedelta(milliseconds=1)


def _same_moment(sent: datetime | None, stored: datetime | None) -> bool:
    if sent is None or stored is None:
        return sent is None and stored is None
    stored = stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored  # ClickHouse's naive UTC
    return abs(sent - stored) < _STORED_TIME_RESOLUTION


def grant_terms_differing(kind: str, data: CreditGrantData, first: LedgerRow) -> list[str]:
    """The terms in which a grant or purchase differs from ``first``, the stored grant of its id
    that counts. An omitted ``effective_at`` is not compared: it defaults to the event's time,
    which a retry sent afresh has anew."""
    differing = []
    if kind != first.kind:
        differing.append("kind")
    if data.amount is None or data.amount != first.amount:
        differing.append("amount")
    if (data.currency or "") != first.currency:
        differing.append("currency")
    if data.priority != first.priority:
        differing.append("priority")
    if data.effective_at is not None and not _same_moment(data.effective_at, first.effective_at):
        differing.append("effective_at")
    if not _same_moment(data.expires_at, first.expires_at):
        differing.append("expires_at")
    if kind == "purchased" and first.kind == "purchased":
        if data.price_paid is None or first.price_paid is None or data.price_paid != first.price_paid:
            differing.append("price_paid")
        if (data.payment_reference or "") != first.payment_reference:
            differing.append("payment_reference")
    return differing


def check_grant_terms(kind: str, data: CreditGrantData, first: LedgerRow | None) -> None:
    """Raise ``invalid_data`` for a grant or purchase of an id its customer holds already with
    other terms (``first``: the id's first stored grant, None before one). Only the first one
    counts, so the repeat would grant nothing while the ledger listed it and sums of what was
    bought counted it; an identical repeat (a retry under a new event id) is let through, and
    changes nothing. Check the owner first (:func:`check_grant_owner`)."""
    if kind not in ("granted", "purchased") or first is None:
        return
    differing = grant_terms_differing(kind, data, first)
    if differing:
        raise InvalidBillingEvent(
            "invalid_data",
            f"grant {preview(data.grant_id)} is held already with other terms ({', '.join(differing)});"
            " a grant id is granted once: use a new grant_id",
        )


def parse_credit(value: bytes, *, latest_time: datetime | None = None) -> tuple[BillingEvent, str, CreditGrantData]:
    event = parse_envelope(value, latest_time)
    kind = CREDIT_TYPES.get(event.type)
    if kind is None:
        raise InvalidBillingEvent("unknown_type", f"not a credit event type: {preview(event.type)}")
    data = parse_data(CreditGrantData, event)
    if kind == "granted" and (data.amount is None or data.currency is None or data.effective_at is None):
        raise InvalidBillingEvent("invalid_data", "granted needs amount, currency and effective_at")
    if kind == "purchased" and (
        data.amount is None or data.currency is None or data.price_paid is None or data.payment_reference is None
    ):
        raise InvalidBillingEvent("invalid_data", "purchased needs amount, currency, price_paid and payment_reference")
    # Against the time the credit is usable from as stored (``credit_row``): a purchase without
    # ``effective_at`` is usable from the event's time, and one expiring by then was accepted
    # until 2026-12-07 and lapsed unused. A void's times are not a grant's: its expires_at is
    # never read, so only an explicit effective_at is held to it, as before.
    effective = credit_effective_at(event, data) if kind != "voided" else data.effective_at
    if data.expires_at is not None and effective is not None and data.expires_at <= effective:
        which = "effective_at" if data.effective_at is not None else "the event's time (effective_at's default)"
        raise InvalidBillingEvent("invalid_data", f"expires_at must be after {which}")
    return event, kind, data


def credit_effective_at(envelope: BillingEvent, data: CreditGrantData) -> datetime:
    """When a grant, purchase or void takes effect: ``effective_at``, or the event's time."""
    return data.effective_at or envelope.time


def parse_envelope(value: bytes, latest_time: datetime | None = None) -> BillingEvent:
    """The CloudEvent envelope; with ``latest_time`` (see :func:`latest_event_time`), an event
    whose ``time`` is later is rejected as ``future_time``."""
    try:
        event = BillingEvent.model_validate(orjson.loads(value))
    except orjson.JSONDecodeError as exc:
        raise InvalidBillingEvent("invalid_json", f"value is not JSON: {str(exc)[:200]}") from None
    except ValidationError as exc:
        raise InvalidBillingEvent("not_cloudevent", _errors(exc)) from None
    if latest_time is not None and event.time > latest_time:
        raise InvalidBillingEvent(
            "future_time",
            f"time {event.time.isoformat()} is after the record's timestamp plus the allowed clock skew"
            f" ({latest_time.isoformat()}; BASTIONARY_MAX_FUTURE_SKEW)",
        )
    return event


DataModel = TypeVar("DataModel", bound=BaseModel)


def parse_data(model: type[DataModel], event: BillingEvent) -> DataModel:
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidBillingEvent("invalid_data", _errors(exc)) from None


def _errors(exc: ValidationError) -> str:
    # Bounded: a location may be a producer's (misspelt, or huge) field name.
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p)[:64] for p in error["loc"])
        parts.append(f"{where}: {error['msg'][:200]}" if where else error["msg"][:200])
    return "; ".join(parts)


def event_time(moment: datetime | None, fallback: datetime) -> datetime:
    return moment or fallback


def subscription_row(envelope: BillingEvent, kind: str, data: SubscriptionData, received: datetime) -> SubscriptionRow:
    """The ``subscriptions`` row of a parsed subscription event."""
    effective = data.effective_at or data.start
    return SubscriptionRow(
        envelope.id,
        kind,
        data.subscription_id,
        data.customer_id,
        data.plan or "",
        data.start or effective,
        data.billing_anchor,
        effective,
        received,
        data.billing_email or "",
        int(data.backfill),
    )


def credit_row(envelope: BillingEvent, kind: str, data: CreditGrantData, recorded: datetime) -> LedgerRow:
    """The ``credit_ledger`` row of a parsed grant, purchase or void. A purchase without
    ``effective_at`` is usable from the event's time."""
    return LedgerRow(
        envelope.id,
        kind,
        data.grant_id,
        data.customer_id,
        data.amount or Decimal(0),
        data.currency or "",
        data.priority,
        credit_effective_at(envelope, data),
        data.expires_at,
        "",
        recorded,
        data.price_paid if kind == "purchased" else None,
        (data.payment_reference or "") if kind == "purchased" else "",
    )
