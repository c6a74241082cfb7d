"""Credit limits: how much unbilled plus unpaid charge a customer may build up.

A customer record may carry ``credit_limit: {currency, amount, alert_at}``, or the plan a
customer is on ``credit_limit: {amount, alert_at}`` in the plan's currency (the record's
own limit wins; :func:`plan_limits`). The customer's
**exposure** in that currency is what it owes and has not paid (every issued invoice's
amount due, after payments and credit notes) plus the **running charge** of its open
periods: each subscription's next invoice priced now with the rater's own code, after the
credits it would draw (``rating.rater.upcoming_invoices``).

From the exposure, :func:`spend_events` decides what to announce, at most once each:

- ``bastionary.credit_limit.threshold_crossed.v1`` when the exposure reaches a share in
  ``alert_at`` of the limit, once per share and open period (id: customer, currency, share,
  period start);
- ``bastionary.credit_limit.reached.v1`` when it reaches the limit, and
  ``bastionary.credit_limit.restored.v1`` when it falls back below it (a payment, a credit
  note, a new period) or the limit no longer applies (:func:`limit_lifted`), numbered by
  how many such changes came before (id: customer, currency, number), so a decision taken
  twice lands on the same event.

While the limit is reached, metered entitlements answer ``credit_limit_reached``.

Pure Python: no broker, no database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

from bastionary.money import format_money
from bastionary.rating.events import Amount, check_currency
from bastionary.rating.invoice import Subscription

SPEND_NAMESPACE = uuid.UUID("7c1e2f4a-9b3d-4e5f-8a6b-1c2d3e4f5a6b")
THRESHOLD_CROSSED = "bastionary.credit_limit.threshold_crossed.v1"
LIMIT_REACHED = "bastionary.credit_limit.reached.v1"
LIMIT_RESTORED = "bastionary.credit_limit.restored.v1"
SpendEventKind = Literal["threshold_crossed", "reached", "restored"]
Share = Annotated[Decimal, Field(gt=0, lt=1, allow_inf_nan=False)]


class CreditLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: StrictStr
    amount: Amount = Field(gt=0)
    alert_at: Annotated[list[Share], Field(max_length=8)] = []  # shares of the limit, e.g. 0.8

    @field_validator("alert_at")
    @classmethod
    def _distinct(cls, shares: list[Decimal]) -> list[Decimal]:
        if len(set(shares)) != len(shares):
            raise ValueError("alert_at repeats a share")
        return sorted(shares)

    @model_validator(mode="after")
    def _money(self) -> CreditLimit:
        check_currency(self.currency, self.amount)
        return self


def plan_limits(subscriptions: list[Subscription], now: datetime) -> dict[str, CreditLimit]:
    """The credit limit each customer's plans set: the ``credit_limit`` of the plan in force
    now of each active subscription; with several, the lowest (in the first currency by code).
    A customer record's own limit wins over these (the caller applies it)."""
    out: dict[str, CreditLimit] = {}
    for sub in subscriptions:
        plan = sub.plan_at(now)
        if not sub.active_at(now) or plan.credit_limit is None:
            continue
        limit = CreditLimit(
            currency=plan.currency, amount=plan.credit_limit.amount, alert_at=plan.credit_limit.alert_at
        )
        current = out.get(sub.customer_id)
        if current is None or (limit.currency, limit.amount) < (current.currency, current.amount):
            out[sub.customer_id] = limit
    return out


@dataclass
class SpendHistory:
    """What was announced before for one customer and currency."""

    alerts: set[tuple[str, str]] = field(default_factory=set)  # (share, period start) sent
    changes: int = 0  # reached/restored events so far
    limit: Decimal | None = None  # the limit the last reached/restored event was decided against

    @property
    def reached(self) -> bool:
        return self.changes % 2 == 1  # they alternate, reached first


@dataclass(frozen=True)
class SpendEvent:
    event_id: str
    event_type: str
    kind: SpendEventKind
    customer_id: str
    currency: str
    share: str  # the alert share, "1" for reached/restored
    data: dict[str, Any]


def _id(*parts: str) -> str:
    return str(uuid.uuid5(SPEND_NAMESPACE, "|".join(parts)))


def _data(
    customer: str,
    currency: str,
    limit: Decimal,
    unpaid: Decimal,
    running: Decimal,
    period_start: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    exposure = max(unpaid, Decimal(0)) + max(running, Decimal(0))
    return {
        "customer_id": customer,
        "currency": currency,
        "limit": format_money(limit, currency),
        "exposure": format_money(exposure, currency),
        "unpaid": format_money(unpaid, currency),
        "running_charge": format_money(running, currency),
        "period_start": period_start.isoformat() if period_start is not None else None,
        "at": now.isoformat(),
    }


def _change(base: dict[str, Any], reached: bool, history: SpendHistory) -> SpendEvent:
    """The next reached/restored event, numbered by how many came before."""
    kind: SpendEventKind = "reached" if reached else "restored"
    customer, currency = base["customer_id"], base["currency"]
    number = str(history.changes + 1)
    data = {**base, "share": "1", "sequence": history.changes + 1}
    event_type = LIMIT_REACHED if reached else LIMIT_RESTORED
    return SpendEvent(_id(customer, currency, kind, number), event_type, kind, customer, currency, "1", data)


def spend_events(
    customer: str,
    limit: CreditLimit,
    unpaid: Decimal,
    running: Decimal,
    period_start: datetime | None,
    history: SpendHistory,
    now: datetime,
) -> list[SpendEvent]:
    """What the customer's exposure now calls for, given what was announced (``history``)."""
    base = _data(customer, limit.currency, limit.amount, unpaid, running, period_start, now)
    exposure = max(unpaid, Decimal(0)) + max(running, Decimal(0))
    period = base["period_start"] or ""
    out = []
    for share in limit.alert_at:
        text = format(share.normalize(), "f")
        if exposure >= share * limit.amount and (text, period) not in history.alerts:
            data = {**base, "share": text}
            out.append(
                SpendEvent(
                    _id(customer, limit.currency, "alert", text, period),
                    THRESHOLD_CROSSED,
                    "threshold_crossed",
                    customer,
                    limit.currency,
                    text,
                    data,
                )
            )
    reached = exposure >= limit.amount
    if reached != history.reached:
        out.append(_change(base, reached, history))
    return out


def limit_lifted(
    customer: str,
    currency: str,
    unpaid: Decimal,
    running: Decimal,
    period_start: datetime | None,
    history: SpendHistory,
    now: datetime,
) -> list[SpendEvent]:
    """A reached limit in ``currency`` that no longer applies (taken off the customer record,
    or the plan that set it left, or the limit moved to another currency) is restored: nothing
    else would ever restore it, and metered entitlements would stay denied for good. ``limit``
    is the one it was reached at."""
    if not history.reached:
        return []
    limit = history.limit if history.limit is not None else Decimal(0)
    return [_change(_data(customer, currency, limit, unpaid, running, period_start, now), False, history)]
