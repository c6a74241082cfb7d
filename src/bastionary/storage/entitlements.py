"""ClickHouse reads and writes for entitlements: overrides, suspensions, period usage, changes."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from bastionary.entitlements.changes import Change
from bastionary.entitlements.overrides import Override
from bastionary.metering.meters import Meter
from bastionary.rating.invoice import Subscription
from bastionary.rating.plans import Plan
from bastionary.rating.subscriptions import SubscriptionEvent, build_subscription
from bastionary.rating.subscriptions import utc as _utc
from bastionary.storage.client import Client
from bastionary.storage.queries import QueryParameters, value_expression

OVERRIDE_COLUMNS = (
    "event_id",
    "override_id",
    "customer_id",
    "feature",
    "effective_at",
    "expires_at",
    "limit_value",
    "limit_delta",
    "enabled",
    "received_at",
)
CHANGE_COLUMNS = (
    "change_id",
    "customer_id",
    "feature",
    "kind",
    "period_start",
    "detail",
    "ordinal",
    "recorded_at",
    "published",
)


# The customers of a batch read: a set the primary key can use, not one query per customer.
_CUSTOMERS = "(SELECT arrayJoin({cs:Array(String)}))"


class ClickHouseEntitlementStore:
    """Entitlements' tables (:class:`bastionary.entitlements.ports.EntitlementStore`) and override writes."""

    def __init__(self, client: Client, plans: Iterable[Plan]):
        self.client = client
        self.plans = {plan.key: plan for plan in plans}

    # -- inputs --------------------------------------------------------------------------

    def insert_override(self, override: Override) -> None:
        enabled = None if override.enabled is None else int(override.enabled)
        row = (
            override.event_id,
            override.override_id,
            override.customer_id,
            override.feature,
            override.effective_at,
            override.expires_at,
            override.limit,
            override.limit_delta,
            enabled,
            datetime.now(UTC),
        )
        self.client.insert("entitlement_overrides", [row], column_names=OVERRIDE_COLUMNS)

    def overrides(self, customers: Collection[str]) -> dict[str, list[Override]]:
        rows = self.client.query(
            "SELECT event_id, override_id, customer_id, feature, effective_at, expires_at, limit_value, limit_delta,"
            f" enabled FROM entitlement_overrides FINAL WHERE customer_id IN {_CUSTOMERS} ORDER BY received_at",
            parameters={"cs": list(customers)},
        ).result_rows
        out: dict[str, list[Override]] = {}
        for e, o, c, f, at, exp, lim, delta, en in rows:
            override = Override(
                e, o, c, f, _utc(at), _utc(exp), _dec(lim), _dec(delta), None if en is None else bool(en)
            )
            out.setdefault(c, []).append(override)
        return out

    def subscriptions(self, customers: Collection[str]) -> dict[str, list[Subscription]]:
        """Every subscription of each customer; the state picks the one a check is answered
        from (:func:`bastionary.entitlements.state.subscription_in_force`)."""
        # Every event of the subscriptions the customers' created events name, as the rater
        # reads them (``received_at`` included: it decides which events the rater ignores).
        rows = self.client.query(
            "SELECT subscription_id, customer_id, event_type, plan, start, billing_anchor, effective_at,"
            " received_at, backfill FROM subscriptions FINAL WHERE subscription_id IN (SELECT subscription_id"
            f" FROM subscriptions WHERE customer_id IN {_CUSTOMERS} AND event_type = 'created')"
            " ORDER BY subscription_id, effective_at, event_type = 'canceled', event_id",
            parameters={"cs": list(customers)},
        ).result_rows
        by_id: dict[str, list[SubscriptionEvent]] = {}
        for row in rows:
            by_id.setdefault(row[0], []).append(SubscriptionEvent(*row))
        out: dict[str, list[Subscription]] = {}
        for subscription_id, events in by_id.items():
            sub = build_subscription(subscription_id, events, self.plans)
            if sub is not None:
                out.setdefault(sub.customer_id, []).append(sub)
        return out

    def suspended(self, customer: str) -> bool:
        """A dunning suspend step applied to one of the customer's invoices and not reinstated."""
        rows = self.client.query(
            "SELECT countIf(kind = 'notice' AND action = 'suspend') > countIf(kind = 'reinstated')"
            " FROM dunning_events FINAL WHERE customer_id = {c:String} AND kind IN ('notice', 'reinstated')"
            " GROUP BY invoice_id",
            parameters={"c": customer},
        ).result_rows
        return any(row[0] for row in rows)

    def credit_limited(self, customers: Collection[str]) -> set[str]:
        """Customers whose last reached/restored event is ``reached`` (they alternate, so an
        odd count of them means reached)."""
        rows = self.client.query(
            f"SELECT customer_id, count() FROM spend_events FINAL WHERE customer_id IN {_CUSTOMERS}"
            " AND kind IN ('reached', 'restored') GROUP BY customer_id",
            parameters={"cs": list(customers)},
        ).result_rows
        return {customer for customer, changes in rows if changes % 2 == 1}

    def suspension_histories(self, customers: Collection[str]) -> dict[str, list[str]]:
        """Each customer's suspended/reinstated transitions, in order, from the dunning trail:
        suspended when a first invoice is suspended, reinstated when the last one is lifted.
        Derived from history, not the current flag, so a suspension lifted before anyone
        looked still yields both events. Customers with none are left out."""
        rows = self.client.query(
            f"SELECT customer_id, invoice_id, kind FROM dunning_events FINAL WHERE customer_id IN {_CUSTOMERS}"
            " AND ((kind = 'notice' AND action = 'suspend') OR kind = 'reinstated')"
            " ORDER BY customer_id, at, recorded_at, kind",
            parameters={"cs": list(customers)},
        ).result_rows
        open_invoices: dict[str, set[str]] = {}
        transitions: dict[str, list[str]] = {}
        for customer, invoice_id, kind in rows:
            invoices = open_invoices.setdefault(customer, set())
            before = bool(invoices)
            (invoices.add if kind == "notice" else invoices.discard)(invoice_id)
            if bool(invoices) != before:
                transitions.setdefault(customer, []).append("suspended" if invoices else "reinstated")
        return transitions

    def usage(
        self, customers: Collection[str], meter: Meter, filters: dict[str, str], start: datetime, end: datetime
    ) -> dict[str, Decimal]:
        """Each customer's usage of ``meter`` in [start, end); customers with none are left out."""
        params: QueryParameters = {"meter": meter.key, "cs": list(customers), "start": start, "end": end}
        where = [
            "meter = {meter:String}",
            f"customer_id IN {_CUSTOMERS}",
            "window_start >= {start:DateTime('UTC')}",
            "window_start < {end:DateTime('UTC')}",
        ]
        for i, (name, value) in enumerate(sorted(filters.items())):
            params[f"k{i}"], params[f"v{i}"] = name, value
            where.append(f"group_values[{{k{i}:String}}] = {{v{i}:String}}")
        rows = self.client.query(
            f"SELECT customer_id, {value_expression(meter.aggregation)} FROM usage_rollup_1m"
            f" WHERE {' AND '.join(where)} GROUP BY customer_id",
            parameters=params,
        ).result_rows
        return {customer: Decimal(value or 0) for customer, value in rows}

    def changed_rows(self, since: datetime) -> set[tuple[str, str]]:
        """(customer, row id) of subscription, override and suspension rows received after
        ``since``: the poll remembers row ids, so one change causes one re-read."""
        at = "{t:DateTime64(3, 'UTC')}"
        rows = self.client.query(
            f"SELECT customer_id, concat('s:', event_id) FROM subscriptions WHERE received_at > {at}"
            f" UNION DISTINCT SELECT customer_id, concat('o:', event_id) FROM entitlement_overrides"
            f" WHERE received_at > {at}"
            f" UNION DISTINCT SELECT customer_id, concat('d:', event_id) FROM dunning_events WHERE recorded_at > {at}"
            "   AND ((kind = 'notice' AND action = 'suspend') OR kind = 'reinstated')"
            f" UNION DISTINCT SELECT customer_id, concat('l:', event_id) FROM spend_events WHERE at > {at}"
            "   AND kind IN ('reached', 'restored')",
            parameters={"t": since},
        ).result_rows
        return {(customer, row_id) for customer, row_id in rows}

    # -- changes -------------------------------------------------------------------------

    def recorded_changes(self, customers: Collection[str]) -> dict[str, list[Change]]:
        rows = self.client.query(
            "SELECT change_id, kind, customer_id, feature, period_start, detail FROM entitlement_changes FINAL"
            f" WHERE customer_id IN {_CUSTOMERS} ORDER BY customer_id, ordinal",
            parameters={"cs": list(customers)},
        ).result_rows
        out: dict[str, list[Change]] = {}
        for i, k, c, f, p, d in rows:
            out.setdefault(c, []).append(Change(i, k, c, f, _utc(p), orjson.loads(d)))
        return out

    def store_changes(self, changes: list[Change], first_ordinal: int, published: int = 0) -> None:
        now = datetime.now(UTC)
        rows = [
            (
                c.change_id,
                c.customer_id,
                c.feature,
                c.kind,
                c.period_start,
                orjson.dumps(c.detail).decode(),
                first_ordinal + n,
                now,
                published,
            )
            for n, c in enumerate(changes)
        ]
        if rows:
            self.client.insert("entitlement_changes", rows, column_names=CHANGE_COLUMNS)

    def mark_published(self, customer: str, changes: list[Change], first_ordinal: int) -> None:
        self.store_changes(changes, first_ordinal, published=1)

    def unpublished_customers(self) -> set[str]:
        rows = self.client.query("SELECT DISTINCT customer_id FROM entitlement_changes FINAL WHERE published = 0")
        return {row[0] for row in rows.result_rows}

    def unpublished(self, customer: str) -> list[tuple[Change, int]]:
        rows = self.client.query(
            "SELECT change_id, kind, customer_id, feature, period_start, detail, ordinal FROM entitlement_changes"
            " FINAL WHERE customer_id = {c:String} AND published = 0 ORDER BY ordinal",
            parameters={"c": customer},
        ).result_rows
        return [(Change(i, k, c, f, _utc(p), orjson.loads(d)), o) for i, k, c, f, p, d, o in rows]


def _dec(value: Decimal | None) -> Decimal | None:
    return None if value is None else Decimal(value)
