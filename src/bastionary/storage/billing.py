"""ClickHouse reads and writes for rating: subscriptions, credits, usage as of a cutoff, invoices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from bastionary.credits.ledger import Grant
from bastionary.metering.meters import Meter
from bastionary.rating.invoice import Billed, Subscription
from bastionary.rating.plans import Plan
from bastionary.rating.ports import LedgerRow, RatedInvoice, SubscriptionRow
from bastionary.rating.pricing import Usage
from bastionary.rating.subscriptions import SubscriptionEvent, build_subscription, utc
from bastionary.storage.client import Client
from bastionary.storage.queries import QueryParameters, value_expression

SUBSCRIPTION_COLUMNS = SubscriptionRow._fields
LEDGER_COLUMNS = LedgerRow._fields
INVOICE_COLUMNS = (
    "invoice_id",
    "customer_id",
    "subscription_id",
    "plan",
    "currency",
    "kind",
    "period_start",
    "period_end",
    "usage_cutoff",
    "issued_at",
    "due_at",
    "subtotal",
    "credits_applied",
    "total",
    "status",
    "document",
    "published",
)
LINE_COLUMNS = (
    "invoice_id",
    "line_no",
    "customer_id",
    "subscription_id",
    "line_key",
    "price_key",
    "meter",
    "description",
    "quantity",
    "amount",
    "currency",
    "period_start",
)


class ClickHouseBillingStore:
    """Rating's tables (:class:`bastionary.rating.ports.BillingStore`), and the billing inputs' writes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- inputs --------------------------------------------------------------------------

    def insert_subscription_events(self, rows: list[SubscriptionRow]) -> None:
        if rows:
            self.client.insert("subscriptions", rows, column_names=SUBSCRIPTION_COLUMNS)

    def insert_ledger(self, rows: list[LedgerRow]) -> None:
        if rows:
            self.client.insert("credit_ledger", rows, column_names=LEDGER_COLUMNS)

    def subscriptions(self, plans: Mapping[str, Plan]) -> list[Subscription]:
        rows = self.client.query(
            "SELECT subscription_id, customer_id, event_type, plan, start, billing_anchor, effective_at"
            " FROM subscriptions FINAL ORDER BY subscription_id, effective_at, event_type = 'canceled', event_id"
        ).result_rows
        by_id: dict[str, list[SubscriptionEvent]] = defaultdict(list)
        for row in rows:
            by_id[row[0]].append(SubscriptionEvent(*row))
        out = []
        for subscription_id, events in by_id.items():
            sub = build_subscription(subscription_id, events, plans)
            if sub is not None:
                out.append(sub)
        return out

    def grants(self) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]:
        """Every customer's grants, and what has been drawn from each (applied + expired)."""
        return self.grants_as_of(None)

    def grants_as_of(self, moment: datetime | None) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]:
        """Grants, and what invoices issued up to ``moment`` (all, if None) drew from them."""
        drawn_filter = (
            ""
            if moment is None
            else " WHERE kind IN ('granted', 'voided') OR invoice_id IN (SELECT invoice_id FROM invoices FINAL WHERE issued_at <= {at:DateTime64(3, 'UTC')})"
        )
        rows = self.client.query(
            "SELECT kind, grant_id, customer_id, amount, currency, priority, effective_at, expires_at"
            " FROM credit_ledger FINAL" + drawn_filter,
            parameters={"at": moment} if moment is not None else None,
        ).result_rows
        granted, voided = {}, {}
        drawn: defaultdict[str, Decimal] = defaultdict(Decimal)
        for kind, grant_id, customer, amount, currency, priority, effective_at, expires_at in rows:
            if kind == "granted":
                granted[grant_id] = (customer, amount, currency, priority, utc(effective_at), utc(expires_at))
            elif kind == "voided":
                voided[grant_id] = utc(effective_at)
            else:
                drawn[grant_id] += Decimal(amount)
        by_customer: dict[str, list[Grant]] = defaultdict(list)
        for grant_id, (customer, amount, currency, priority, effective_at, expires_at) in granted.items():
            grant = Grant(
                grant_id, customer, Decimal(amount), currency, priority, effective_at, expires_at, voided.get(grant_id)
            )
            by_customer[customer].append(grant)
        return dict(by_customer), dict(drawn)

    # -- usage ---------------------------------------------------------------------------

    def usage_by_customer(
        self, meter: Meter, filters: dict[str, str], start: datetime, end: datetime, as_of: datetime
    ) -> dict[str, Usage]:
        """Each customer's meter value over [start, end) counting only rows ingested before ``as_of``."""
        params: QueryParameters = {"meter": meter.key, "start": start, "end": end, "as_of": as_of}
        where = [
            "meter = {meter:String}",
            "window_start >= {start:DateTime('UTC')}",
            "window_start < {end:DateTime('UTC')}",
            "ingested_minute < {as_of:DateTime('UTC')}",
        ]
        for i, (name, value) in enumerate(sorted(filters.items())):
            params[f"k{i}"], params[f"v{i}"] = name, value
            where.append(f"group_values[{{k{i}:String}}] = {{v{i}:String}}")
        sql = (
            f"SELECT customer_id, {value_expression(meter.aggregation)}, sum(event_count)"
            f" FROM usage_rollup_1m WHERE {' AND '.join(where)} GROUP BY customer_id"
        )
        return {
            customer: Usage(Decimal(value or 0), int(events))
            for customer, value, events in self.client.query(sql, parameters=params).result_rows
        }

    # -- invoices ------------------------------------------------------------------------

    def invoice_ids(self) -> set[str]:
        return {row[0] for row in self.client.query("SELECT DISTINCT invoice_id FROM invoices").result_rows}

    def unpublished_documents(self) -> list[str]:
        """Stored invoices not yet confirmed on billing.invoices (a rater stopped in between)."""
        return [
            row[0] for row in self.client.query("SELECT document FROM invoices FINAL WHERE published = 0").result_rows
        ]

    def billed(self, subscription_id: str) -> Billed:
        rows = self.client.query(
            "SELECT period_start, line_key, sum(quantity), sum(amount) FROM invoice_lines FINAL"
            " WHERE subscription_id = {s:String} GROUP BY period_start, line_key",
            parameters={"s": subscription_id},
        ).result_rows
        return {(utc(start), key): (Decimal(q), Decimal(a)) for start, key, q, a in rows}

    def store_invoices(self, rated: list[RatedInvoice]) -> None:
        """Lines and ledger first, the invoice rows last: a stored invoice is always complete."""
        line_rows, ledger_rows, invoice_rows = [], [], []
        for item in rated:
            data, cutoff, lines, ledger = item.invoice.document(), item.cutoff, item.lines, item.ledger
            currency = data["currency"]
            period_start = _parse(data["period_start"])
            for n, line in enumerate(lines):
                line_rows.append(
                    (
                        data["invoice_id"],
                        n,
                        data["customer_id"],
                        data["subscription_id"],
                        line.line_key,
                        line.price_key,
                        line.meter or "",
                        line.description,
                        line.quantity,
                        Decimal(line.as_dict(currency)["amount"]),
                        currency,
                        line.period_start or period_start,
                    )
                )
            ledger_rows.extend(ledger)
            invoice_rows.append(self._invoice_row(data, cutoff, published=0))
        if line_rows:
            self.client.insert("invoice_lines", line_rows, column_names=LINE_COLUMNS)
        self.insert_ledger(ledger_rows)
        if invoice_rows:
            self.client.insert("invoices", invoice_rows, column_names=INVOICE_COLUMNS)

    def mark_published(self, invoices: list[tuple[dict[str, Any], datetime]]) -> None:
        rows = [self._invoice_row(data, cutoff, published=1) for data, cutoff in invoices]
        if rows:
            self.client.insert("invoices", rows, column_names=INVOICE_COLUMNS)

    @staticmethod
    def _invoice_row(data: dict[str, Any], cutoff: datetime, published: int) -> tuple[object, ...]:
        return (
            data["invoice_id"],
            data["customer_id"],
            data["subscription_id"],
            data["plan"],
            data["currency"],
            data["kind"],
            _parse(data["period_start"]),
            _parse(data["period_end"]),
            cutoff,
            _parse(data["issued_at"]),
            _parse(data["due_at"]),
            Decimal(data["subtotal"]),
            Decimal(data["credits_applied"]),
            Decimal(data["total"]),
            data["status"],
            orjson.dumps(data).decode(),
            published,
        )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)
