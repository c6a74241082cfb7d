"""Per-customer entitlement overrides: the ``entitlements.overrides`` topic.

Each record is one structured-JSON CloudEvent of type ``bastionary.entitlement.override.v1``,
keyed by customer id. Invalid ones are reported with a code, as billing events are: whatever
bytes arrive, :func:`parse_override` returns an :class:`Override` or raises
:class:`InvalidOverride`, and what it accepts fits ``entitlement_overrides`` (times within
1970 .. 2105, limits within 18 integer and 9 fractional digits, ids of at most 256 characters).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from bastionary.entitlements.spec import FEATURE_REGEX
from bastionary.rating.events import (
    MAX_ID_LENGTH,
    Amount,
    BillingTime,
    Id,
    InvalidBillingEvent,
    parse_data,
    parse_envelope,
    preview,
)

OVERRIDE_TYPE = "bastionary.entitlement.override.v1"
ACTIONS = ("limit", "limit_delta", "enabled")


class InvalidOverride(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Override:
    event_id: str
    override_id: str
    customer_id: str
    feature: str
    effective_at: datetime
    expires_at: datetime | None = None
    limit: Decimal | None = None  # sets the metered limit
    limit_delta: Decimal | None = None  # raises (or lowers) the metered limit, e.g. an extra grant
    enabled: bool | None = None  # enables or disables the feature; enabling one not in the plan grants it

    def active_at(self, now: datetime) -> bool:
        return self.effective_at <= now and (self.expires_at is None or now < self.expires_at)


class _OverrideData(BaseModel):
    # Forbid unknown fields: a misspelt ``expires_at`` would otherwise grant forever.
    model_config = ConfigDict(extra="forbid", frozen=True)

    override_id: Id
    customer_id: Id
    feature: StrictStr = Field(max_length=MAX_ID_LENGTH, pattern=FEATURE_REGEX)
    effective_at: BillingTime
    expires_at: BillingTime | None = None
    limit: Amount | None = Field(default=None, ge=0)  # Amount: finite, 18 integer and 9 fractional digits
    limit_delta: Amount | None = None
    enabled: StrictBool | None = None

    @model_validator(mode="after")
    def _one_action(self) -> _OverrideData:
        given = [name for name in ACTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of {', '.join(ACTIONS)} is needed, got {', '.join(given) or 'none'}")
        if self.limit_delta is not None and self.limit_delta == 0:
            raise ValueError("limit_delta must not be zero")
        if self.expires_at is not None and self.expires_at <= self.effective_at:
            raise ValueError("expires_at must be after effective_at")
        return self


def parse_override(value: bytes, *, latest_time: datetime | None = None) -> Override:
    """``latest_time``: see :func:`bastionary.rating.events.latest_event_time` (``future_time``)."""
    try:
        event = parse_envelope(value, latest_time)
        if event.type != OVERRIDE_TYPE:
            raise InvalidBillingEvent("unknown_type", f"not an entitlement override event type: {preview(event.type)}")
        data = parse_data(_OverrideData, event)
    except InvalidBillingEvent as exc:
        raise InvalidOverride(exc.code, str(exc)) from None
    return Override(event_id=event.id, **data.model_dump())


def active_overrides(overrides: Iterable[Override], feature: str, now: datetime) -> list[Override]:
    """The overrides of ``feature`` in force at ``now``, in the order they apply.

    An override re-sent with the same ``override_id`` (a producer's retry, or a correction)
    replaces the earlier one, so a retried ``limit_delta`` never grants twice.
    """
    latest: dict[str, Override] = {}
    for override in overrides:
        latest[override.override_id] = override
    active = [o for o in latest.values() if o.feature == feature and o.active_at(now)]
    return sorted(active, key=lambda o: (o.effective_at, o.override_id))
