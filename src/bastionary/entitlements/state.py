"""Building a customer's entitlement state from ClickHouse: what a check is answered from.

The worker keeps these in memory and moves the usage forward with each landed flush; the
CLI builds one on demand. Both come from the same rollups, so they agree once data landed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bastionary.entitlements.changes import CUSTOMER_WIDE, Change, change_id
from bastionary.entitlements.evaluate import CustomerState
from bastionary.entitlements.overrides import Override
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
    # A subscription, a booked plan change or an override begins, or an override ends: the
    # answer may change, and the read it causes makes the reconciler tell it.
    next_start: datetime | None = None

    def stale_at(self, now: datetime) -> bool:
        """A period boundary passed (the counters reset), another subscription or a booked plan
        change began, or an override began or ended: the state is built again."""
        return any(moment is not None and now >= moment for moment in (self.state.period_end, self.next_start))


def subscription_in_force(
    subscriptions: Iterable[Subscription], now: datetime
) -> tuple[Subscription | None, datetime | None]:
    """The subscription a check is answered from: of those in force at ``now``, the one that
    started last (None if none is). Also the earliest start still to come, when the answer
    may change: a subscription booked to start next month neither takes access away now nor
    is forgotten when it begins, and a plan change booked for mid-period takes effect when
    it begins, not at the period's end (no row arrives then for the poll to see)."""
    subscriptions = list(subscriptions)
    in_force = [sub for sub in subscriptions if sub.active_at(now)]
    chosen = max(in_force, key=lambda sub: sub.segments[0].start, default=None)
    next_start = min(
        (segment.start for sub in subscriptions for segment in sub.segments if segment.start > now), default=None
    )
    return chosen, next_start


def override_boundary(overrides: Iterable[Override], now: datetime) -> datetime | None:
    """The first moment after ``now`` an override begins or ends. A check answers it from the
    state held, but nothing else reads the customer then, and an exhausted customer sends no
    usage: without a read there, its restored (or a lapsed grant's exhausted) went untold."""
    return min(
        (moment for o in overrides for moment in (o.effective_at, o.expires_at) if moment is not None and moment > now),
        default=None,
    )


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
    """One customer's state (see :func:`build_states`)."""
    return build_states(store, plans, meters, [customer], now)[customer]


def build_states(
    store: EntitlementStore,
    plans: Mapping[str, EntitledPlan],
    meters: Mapping[str, Meter],
    customers: Collection[str],
    now: datetime,
) -> dict[str, Loaded | None]:
    """Every customer's state, None for one Bastionary knows nothing about (no subscription,
    no override). A handful of queries whatever the number of customers: one per table, and
    one per (metered entitlement, period) for the usage.

    ``plans`` is the catalog the store built the subscriptions from, so every plan key is in it."""
    subscriptions = store.subscriptions(customers)
    overrides = store.overrides(customers)
    known = [c for c in customers if c in subscriptions or c in overrides]
    periods: dict[str, tuple[EntitledPlan | None, datetime | None, datetime | None, datetime | None]] = {}
    # (meter, filter, start, end) -> the customers asking; per customer, (feature, that question)
    usage_asked: dict[tuple[str, tuple[tuple[str, str], ...], datetime, datetime], list[str]] = {}
    features: dict[str, list[tuple[str, tuple[str, tuple[tuple[str, str], ...], datetime, datetime]]]] = {}
    next_starts: dict[str, datetime | None] = {}
    for customer in known:
        chosen, next_start = subscription_in_force(subscriptions.get(customer, ()), now)
        boundary = override_boundary(overrides.get(customer, ()), now)
        next_starts[customer] = min((m for m in (next_start, boundary) if m is not None), default=None)
        in_force, start, end = plan_and_period(chosen, now)
        plan = plans[in_force.key] if in_force is not None else None
        # Usage before the subscription began is not its own (its invoice bills from the start).
        counted_from = max(start, chosen.segments[0].start) if chosen is not None and start is not None else None
        periods[customer] = (plan, start, end, counted_from)
        if plan is not None and counted_from is not None and end is not None:  # all or none
            for entitlement in plan.entitlements:
                if isinstance(entitlement, MeteredEntitlement):
                    key = (entitlement.meter, tuple(sorted(entitlement.filter.items())), counted_from, end)
                    usage_asked.setdefault(key, []).append(customer)
                    features.setdefault(customer, []).append((entitlement.feature, key))
    usage_found = {
        key: store.usage(asking, meters[key[0]], dict(key[1]), key[2], key[3]) for key, asking in usage_asked.items()
    }
    suspensions = store.suspension_histories(known) if known else {}
    limited = store.credit_limited(known) if known else set()
    recorded = store.recorded_changes(known) if known else {}
    states: dict[str, Loaded | None] = dict.fromkeys(customers)
    for customer in known:
        plan, start, end, counted_from = periods[customer]
        usage = {feature: usage_found[key].get(customer, Decimal(0)) for feature, key in features.get(customer, [])}
        history = suspensions.get(customer, [])
        suspended = bool(history) and history[-1] == "suspended"
        state = CustomerState(
            customer,
            plan,
            start,
            end,
            suspended,
            usage,
            tuple(overrides.get(customer, ())),
            customer in limited,
            counted_from,
        )
        states[customer] = Loaded(state, recorded.get(customer, []), history, next_starts[customer])
    return states


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


def named_by_override(state: CustomerState, feature: str) -> bool:
    """An override of the customer's names ``feature``, in force or not: a check of it is
    answered (``not_in_plan`` while none is in force), not refused as a feature nothing knows
    (before 2026-12-07 a trial's feature was 404 once the trial ended)."""
    return any(o.feature == feature for o in state.overrides)
