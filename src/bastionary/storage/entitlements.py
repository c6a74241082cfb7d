"""ClickHouse reads and writes for entitlements: overrides, suspensions, period usage, changes."""

from __future__ import annotations

from collections.abc import Iterable
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

    def overrides(self, customer: str) -> list[Override]:
        rows = self.client.query(
            "SELECT event_id, override_id, customer_id, feature, effective_at, expires_at, limit_value, limit_delta,"
            " enabled FROM entitlement_overrides FINAL WHERE customer_id = {c:String} ORDER BY received_at",
            parameters={"c": customer},
        ).result_rows
        return [
            Override(e, o, c, f, _utc(at), _utc(exp), _dec(lim), _dec(delta), None if en is None else bool(en))
            for e, o, c, f, at, exp, lim, delta, en in rows
        ]

    def subscription(self, customer: str) -> Subscription | None:
        """The customer's newest subscription (the one a check is answered from)."""
        rows = self.client.query(
            "SELECT subscription_id, customer_id, event_type, plan, start, billing_anchor, effective_at"
            " FROM subscriptions FINAL WHERE customer_id = {c:String}"
            " ORDER BY subscription_id, effective_at, event_type = 'canceled', event_id",
            parameters={"c": customer},
        ).result_rows
        by_id: dict[str, list[SubscriptionEvent]] = {}
        for row in rows:
            by_id.setdefault(row[0], []).append(SubscriptionEvent(*row))
        subs = [s for s in (build_subscription(i, ev, self.plans) for i, ev in by_id.items()) if s is not None]
        return max(subs, key=lambda s: s.segments[0].start, default=None)

    def suspended(self, customer: str) -> bool:
        """A dunning suspend step applied to one of the customer's invoices and not reinstated."""
        rows = self.client.query(
            "SELECT countIf(kind = 'notice' AND action = 'suspend') > countIf(kind = 'reinstated')"
            " FROM dunning_events FINAL WHERE customer_id = {c:String} AND kind IN ('notice', 'reinstated')"
            " GROUP BY invoice_id",
            parameters={"c": customer},
        ).result_rows
        return any(row[0] for row in rows)

    def suspension_history(self, customer: str) -> list[str]:
        """The customer's suspended/reinstated transitions, in order, from the dunning trail:
        suspended when a first invoice is suspended, reinstated when the last one is lifted.
        Derived from history, not the current flag, so a suspension lifted before anyone
        looked still yields both events."""
        rows = self.client.query(
            "SELECT invoice_id, kind FROM dunning_events FINAL WHERE customer_id = {c:String}"
            " AND ((kind = 'notice' AND action = 'suspend') OR kind = 'reinstated') ORDER BY at, recorded_at, kind",
            parameters={"c": customer},
        ).result_rows
        open_invoices: set[str] = set()
        transitions = []
        for invoice_id, kind in rows:
            before = bool(open_invoices)
            (open_invoices.add if kind == "notice" else open_invoices.discard)(invoice_id)
            if bool(open_invoices) != before:
                transitions.append("suspended" if open_invoices else "reinstated")
        return transitions

    def usage(self, customer: str, meter: Meter, filters: dict[str, str], start: datetime, end: datetime) -> Decimal:
        params: QueryParameters = {"meter": meter.key, "c": customer, "start": start, "end": end}
        where = [
            "meter = {meter:String}",
            "customer_id = {c:String}",
            "window_start >= {start:DateTime('UTC')}",
            "window_start < {end:DateTime('UTC')}",
        ]
        for i, (name, value) in enumerate(sorted(filters.items())):
            params[f"k{i}"], params[f"v{i}"] = name, value
            where.append(f"group_values[{{k{i}:String}}] = {{v{i}:String}}")
        rows = self.client.query(
            f"SELECT {value_expression(meter.aggregation)} FROM usage_rollup_1m WHERE {' AND '.join(where)}",
            parameters=params,
        ).result_rows
        return Decimal(rows[0][0] or 0) if rows else Decimal(0)

    def changed_rows(self, since: datetime) -> set[tuple[str, str]]:
        """(customer, row id) of subscription, override and suspension rows received after
        ``since``: the poll remembers row ids, so one change causes one re-read."""
        at = "{t:DateTime64(3, 'UTC')}"
        rows = self.client.query(
            f"SELECT customer_id, concat('s:', event_id) FROM subscriptions WHERE received_at > {at}"
            f" UNION DISTINCT SELECT customer_id, concat('o:', event_id) FROM entitlement_overrides"
            f" WHERE received_at > {at}"
            f" UNION DISTINCT SELECT customer_id, concat('d:', event_id) FROM dunning_events WHERE recorded_at > {at}"
            "   AND ((kind = 'notice' AND action = 'suspend') OR kind = 'reinstated')",
            parameters={"t": since},
        ).result_rows
        return {(customer, row_id) for customer, row_id in rows}

    # -- changes -------------------------------------------------------------------------

    def recorded_changes(self, customer: str) -> list[Change]:
        rows = self.client.query(
            "SELECT change_id, kind, customer_id, feature, period_start, detail FROM entitlement_changes FINAL"
            " WHERE customer_id = {c:String} ORDER BY ordinal",
            parameters={"c": customer},
        ).result_rows
        return [Change(i, k, c, f, _utc(p), orjson.loads(d)) for i, k, c, f, p, d in rows]

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
