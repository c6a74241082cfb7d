"""Building a customer's entitlement state from ClickHouse: what a check is answered from.

The worker keeps these in memory and moves the usage forward with each landed flush; the
CLI builds one on demand. Both come from the same rollups, so they agree once data landed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bastionary.entitlements.changes import CUSTOMER_WIDE, Change, change_id
from bastionary.entitlements.evaluate import CustomerState
from bastionary.entitlements.ports import EntitlementStore
from bastionary.entitlements.spec import EntitledPlan, MeteredEntitlement
from bastionary.metering.meters import Meter
from bastionary.rating.invoice import Subscription
from bastionary.rating.plans import Plan


@dataclass
class Loaded:
    state: CustomerState
    recorded: list[Change] = field(default_factory=list)  # changes emitted so far, in order
    suspensions: list[str] = field(default_factory=list)  # dunning's suspended/reinstated transitions

    def stale_at(self, now: datetime) -> bool:
        """A period boundary passed: the counters reset, so the state is built again."""
        return self.state.period_end is not None and now >= self.state.period_end


def plan_and_period(
    sub: Subscription | None, now: datetime
) -> tuple[Plan, datetime, datetime] | tuple[None, None, None]:
    """(plan in force, period start, period end) of ``sub`` at ``now``; no plan if none."""
    if sub is None or now < sub.segments[0].start or (sub.canceled_at is not None and now >= sub.canceled_at):
        return None, None, None
    plan = next(
        (s.plan for s in sub.segments if s.start <= now and (s.end is None or now < s.end)), sub.segments[-1].plan
    )
    _, start, end = sub.first_plan.interval.period_containing(sub.anchor, now)
    if sub.canceled_at is not None:
        end = min(end, sub.canceled_at)
    return plan, start, end


def build_state(
    store: EntitlementStore,
    plans: Mapping[str, EntitledPlan],
    meters: Mapping[str, Meter],
    customer: str,
    now: datetime,
) -> Loaded | None:
    """None for a customer Bastionary knows nothing about (no subscription, no override).

    ``plans`` is the catalog the store built the subscriptions from, so every plan key is in it."""
    sub = store.subscription(customer)
    overrides = store.overrides(customer)
    if sub is None and not overrides:
        return None
    in_force, start, end = plan_and_period(sub, now)
    plan = plans[in_force.key] if in_force is not None else None
    usage: dict[str, Decimal] = {}
    if plan is not None and start is not None and end is not None:  # all three or none
        for entitlement in plan.entitlements:
            if isinstance(entitlement, MeteredEntitlement):
                usage[entitlement.feature] = store.usage(
                    customer, meters[entitlement.meter], entitlement.filter, start, end
                )
    suspensions = store.suspension_history(customer)
    suspended = bool(suspensions) and suspensions[-1] == "suspended"
    state = CustomerState(customer, plan, start, end, suspended, usage, tuple(overrides))
    return Loaded(state, store.recorded_changes(customer), suspensions)


def suspension_changes(loaded: Loaded) -> list[Change]:
    """The suspended/reinstated changes of transitions not yet emitted, numbered like
    :func:`due_changes` numbers them, so either path derives the same ids."""
    customer = loaded.state.customer_id
    emitted = [c.kind for c in loaded.recorded if c.kind in ("suspended", "reinstated")]
    out: list[Change] = []
    for _n, kind in enumerate(loaded.suspensions[len(emitted) :], len(emitted)):
        seq = (emitted + [c.kind for c in out]).count(kind) + 1
        out.append(
            Change(change_id(customer, CUSTOMER_WIDE, None, kind, str(seq)), kind, customer, CUSTOMER_WIDE, None, {})
        )
    return out


def known_features(plans: Iterable[EntitledPlan]) -> set[str]:
    return {e.feature for plan in plans for e in plan.entitlements}
