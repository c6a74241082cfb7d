"""The entitlement decision: may this customer use this feature now? A pure function of state."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any, Literal, get_args, overload

from bastionary.entitlements.overrides import Override, active_overrides
from bastionary.entitlements.spec import (
    AnyEntitlement,
    BooleanEntitlement,
    EntitledPlan,
    MeteredEntitlement,
    decimal_text,
)

ZERO = Decimal(0)
# Limits and usage are Decimal(38, 9): the default context's 28 digits would round a balance, a
# raised limit, or usage summed from flush deltas (the service's) past 10^19; twice the
# column's digits keep them exact.
WIDE = Context(prec=76)
DenialReason = Literal["no_subscription", "not_in_plan", "disabled", "suspended", "credit_limit_reached", "exhausted"]
REASONS: tuple[DenialReason, ...] = get_args(DenialReason)  # the API's enum and the metric's zero series


@dataclass(frozen=True)
class CustomerState:
    customer_id: str
    plan: EntitledPlan | None  # the plan in force now; None: no subscription
    period_start: datetime | None  # the subscription's current billing period
    period_end: datetime | None  # when metered usage resets
    suspended: bool
    usage: Mapping[str, Decimal]  # metered feature -> usage in the current period
    overrides: Sequence[Override]
    credit_limited: bool = False  # the customer's credit limit is reached (rating/spend.py)
    # Where usage counts from: the period's start, or the subscription's when its first period
    # starts before it (a stub), as its invoice bills usage from the start. None: period_start.
    counted_from: datetime | None = None

    @property
    def usage_start(self) -> datetime | None:
        return self.period_start if self.counted_from is None else self.counted_from


@dataclass(frozen=True)
class Decision:
    feature: str
    has_access: bool
    type: str | None = None
    usage: Decimal | None = None
    limit: Decimal | None = None
    balance: Decimal | None = None
    soft: bool | None = None
    reset_at: datetime | None = None
    reason: DenialReason | None = None
    config: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "has_access": self.has_access,
            "type": self.type,
            "usage": _decimal(self.usage),
            "limit": _decimal(self.limit),
            "balance": _decimal(self.balance),
            "soft": self.soft,
            "reset_at": iso_z(self.reset_at),
            "reason": self.reason,
            "config": self.config,
        }


def effective_limit(entitlement: MeteredEntitlement, overrides: Iterable[Override], now: datetime) -> Decimal:
    """The plan's limit with the active overrides applied in order: ``limit`` sets, ``limit_delta`` adds.

    Floored at 0 after every step, so a cut larger than the limit cannot eat a later grant.
    """
    limit = entitlement.limit
    for override in active_overrides(overrides, entitlement.feature, now):
        if override.limit is not None:
            limit = override.limit
        elif override.limit_delta is not None:
            limit = max(WIDE.add(limit, override.limit_delta), ZERO)
    return limit


def check(state: CustomerState, feature: str, now: datetime) -> Decision:
    if state.plan is None:
        return Decision(feature, False, reason="no_subscription")
    active = active_overrides(state.overrides, feature, now)
    # The latest enable/disable in force wins over earlier ones and over the plan.
    switch = next((o.enabled for o in reversed(active) if o.enabled is not None), None)
    entitlement = _in_plan(state.plan, feature)
    if entitlement is None:
        if switch is not True:
            return Decision(feature, False, reason="not_in_plan")
        entitlement = BooleanEntitlement(feature=feature, type="boolean")  # granted by the override alone

    decision = _describe(state, entitlement, now)
    plan_enabled = entitlement.enabled if isinstance(entitlement, BooleanEntitlement) else True
    if switch is False or (switch is None and not plan_enabled):
        return _deny(decision, "disabled")
    if state.suspended and not entitlement.survives_suspension:
        return _deny(decision, "suspended")
    if state.credit_limited and isinstance(entitlement, MeteredEntitlement):
        return _deny(decision, "credit_limit_reached")  # more usage would charge past the limit
    if isinstance(entitlement, MeteredEntitlement) and not entitlement.soft and _used_up(decision):
        return _deny(decision, "exhausted")
    return decision


def check_all(state: CustomerState, now: datetime) -> list[Decision]:
    """Every feature of the plan, and every feature an override grants, by name. No plan: none."""
    if state.plan is None:
        return []
    in_plan = [check(state, e.feature, now) for e in state.plan.entitlements]
    candidates = {o.feature for o in state.overrides if o.enabled is True and o.active_at(now)}
    candidates -= {d.feature for d in in_plan}
    granted = [d for d in (check(state, f, now) for f in candidates) if d.reason != "not_in_plan"]
    return sorted(in_plan + granted, key=lambda d: d.feature)


def _in_plan(plan: EntitledPlan, feature: str) -> AnyEntitlement | None:
    return next((e for e in plan.entitlements if e.feature == feature), None)


def _describe(state: CustomerState, entitlement: AnyEntitlement, now: datetime) -> Decision:
    """The decision as if nothing denied access: the caller turns it into a denial."""
    if isinstance(entitlement, MeteredEntitlement):
        usage = state.usage.get(entitlement.feature, ZERO)
        limit = effective_limit(entitlement, state.overrides, now)
        return Decision(
            entitlement.feature,
            True,
            type="metered",
            usage=usage,
            limit=limit,
            balance=max(WIDE.subtract(limit, usage), ZERO),
            soft=entitlement.soft,
            reset_at=state.period_end,
        )
    if isinstance(entitlement, BooleanEntitlement):
        return Decision(entitlement.feature, True, type="boolean")
    return Decision(entitlement.feature, True, type="static", config=copy.deepcopy(entitlement.config))


def _used_up(decision: Decision) -> bool:
    # _describe sets both on every metered decision; Decision leaves them None for the other types.
    return decision.usage is not None and decision.limit is not None and decision.usage >= decision.limit


def _deny(decision: Decision, reason: DenialReason) -> Decision:
    # Keep the description (usage, limit, config): it tells the caller why, and how far off.
    return replace(decision, has_access=False, reason=reason)


@overload
def iso_z(moment: datetime) -> str: ...
@overload
def iso_z(moment: datetime | None) -> str | None: ...


def iso_z(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _decimal(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)
