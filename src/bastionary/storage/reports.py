"""Read-only reports over the usage and billing tables: what the CLI prints and the HTTP API
answers, from one query each, so the two always agree."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from bastionary.credits.balances import GrantBalance, totals
from bastionary.credits.ledger import FUNDING_OF_KIND, movement_id
from bastionary.metering.meters import Meter
from bastionary.money import MINOR_UNITS, format_money, plain_decimal
from bastionary.rating.subscriptions import utc
from bastionary.storage.client import Client
from bastionary.storage.queries import usage_query

INVOICE_COLUMNS = (
    "invoice_id",
    "customer_id",
    "subscription_id",
    "plan",
    "kind",
    "period_start",
    "period_end",
    "due_at",
    "currency",
    "subtotal",
    "credits_applied",
    "total",
    "status",
)
MONEY_COLUMNS = ("subtotal", "credits_applied", "total")


LEDGER_COLUMNS = (
    "movement_id",
    "kind",
    "grant_id",
    "amount",
    "currency",
    "effective_at",
    "expires_at",
    "invoice_id",
    "recorded_at",
    "price_paid",
    "payment_reference",
)
USAGE_COLUMNS = ("customer_id", "window_start", "window_end", "group", "value")
GRANT_COLUMNS = (
    "grant_id",
    "funding",
    "currency",
    "granted",
    "remaining",
    "priority",
    "effective_at",
    "expires_at",
    "status",
)
BALANCE_COLUMNS = ("currency", "promotional", "paid", "carried", "available")


def grant_row(line: GrantBalance) -> dict[str, Any]:
    """One grant of a credit balance, JSON-ready (``credits balance`` and the API)."""
    grant = line.grant
    values = (
        grant.grant_id,
        grant.funding,
        grant.currency,
        money_text(grant.amount, grant.currency),
        money_text(line.remaining, grant.currency),
        grant.priority,
        jsonable(grant.effective_at),
        jsonable(grant.expires_at),
        line.status,
    )
    return dict(zip(GRANT_COLUMNS, values, strict=True))


def balance_rows(lines: list[GrantBalance]) -> list[dict[str, Any]]:
    """What is available per currency, by funding and in all, JSON-ready."""
    return [
        {"currency": currency, **{name: money_text(value, currency) for name, value in amounts.items()}}
        for currency, amounts in totals(lines).items()
    ]


def meter_usage(
    client: Client,
    meter: Meter,
    customer: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    window: str | None = None,
    group_by: list[str] | tuple[str, ...] = (),
    filters: dict[str, str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """A meter's values (:func:`bastionary.storage.queries.usage_query`), one JSON-ready row
    per customer, group and window (at most ``limit``); values are exact decimal strings."""
    sql, params = usage_query(meter, customer, start, end, window, group_by, filters, limit)
    return [
        dict(zip(USAGE_COLUMNS, (customer_id, jsonable(ws), jsonable(we), dict(group), number(value)), strict=True))
        for customer_id, ws, we, group, value in client.query(sql, parameters=params).result_rows
    ]


class InvoiceReports:
    def __init__(self, client: Client) -> None:
        self.client = client

    def knows(self, customer_id: str) -> bool:
        """Whether any subscription, customer record, credit movement or usage has this id."""
        tables = ("subscriptions", "customers", "credit_ledger", "usage_rollup_1m")
        probes = " UNION ALL ".join(f"(SELECT 1 FROM {t} WHERE customer_id = {{c:String}} LIMIT 1)" for t in tables)
        return bool(
            self.client.query(f"SELECT count() FROM ({probes})", parameters={"c": customer_id}).result_rows[0][0]
        )

    def invoices(self, customer_id: str | None = None) -> list[tuple[Any, ...]]:
        """Finalized invoices (one row per invoice id, the latest version), in ``INVOICE_COLUMNS``
        order; an empty final adjustment (nothing to bill, never published) is left out."""
        where, params = ("AND customer_id = {c:String}", {"c": customer_id}) if customer_id else ("", {})
        sql = (
            f"SELECT {', '.join(INVOICE_COLUMNS)} FROM invoices FINAL WHERE status != 'empty' {where}"
            " ORDER BY period_end, invoice_id"
        )
        return [tuple(row) for row in self.client.query(sql, parameters=params).result_rows]

    def summaries(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        """:meth:`invoices` JSON-ready: amounts at the currency's precision (``10.00``), as on
        the invoice itself; times ISO 8601."""
        out = []
        for row in self.invoices(customer_id):
            summary = dict(zip(INVOICE_COLUMNS, map(jsonable, row), strict=True))
            for name in MONEY_COLUMNS:
                summary[name] = money_text(row[INVOICE_COLUMNS.index(name)], summary["currency"])
            out.append(summary)
        return out

    def documents(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        """The invoice documents as published (lines, due dates, tax, credits), oldest period first."""
        where, params = ("AND customer_id = {c:String}", {"c": customer_id}) if customer_id else ("", {})
        sql = f"SELECT document FROM invoices FINAL WHERE status != 'empty' {where} ORDER BY period_end, invoice_id"
        return [orjson.loads(row[0]) for row in self.client.query(sql, parameters=params).result_rows]

    def ledger_rows(self, customer_id: str) -> list[dict[str, Any]]:
        """:meth:`ledger` JSON-ready, amounts at their currency's precision."""
        out = []
        for row in self.ledger(customer_id):
            movement = dict(zip(LEDGER_COLUMNS, map(jsonable, row), strict=True))
            for name in ("amount", "price_paid"):
                movement[name] = money_text(row[LEDGER_COLUMNS.index(name)], movement["currency"])
            out.append(movement)
        return out

    def ledger(self, customer_id: str, at: datetime | None = None) -> list[tuple[Any, ...]]:
        """The customer's credit movements in ``LEDGER_COLUMNS`` order, oldest first. An
        invoice's movements are listed once the invoice is stored (its row is the commit
        marker of the rater's store). As of ``at`` (default now), a void shows what it took
        away, and an expiry no invoice recorded yet shows what lapsed (:func:`movements_as_read`)."""
        sql = (
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM credit_ledger FINAL WHERE customer_id = {{c:String}}"
            " AND (kind IN ('granted', 'purchased', 'voided', 'credit_note')"
            " OR invoice_id IN (SELECT invoice_id FROM invoices WHERE customer_id = {c:String}))"
            " ORDER BY recorded_at, movement_id"
        )
        rows = [tuple(row) for row in self.client.query(sql, parameters={"c": customer_id}).result_rows]
        # A grant id is its first grant's customer's (ClickHouseBillingStore.grants_as_of).
        holders = self.client.query(
            "SELECT grant_id, customer_id FROM credit_ledger FINAL WHERE kind IN ('granted', 'purchased')"
            " AND grant_id IN (SELECT grant_id FROM credit_ledger WHERE customer_id = {c:String})"
            " ORDER BY recorded_at, movement_id",
            parameters={"c": customer_id},
        ).result_rows
        first_holder: dict[str, str] = {}
        for grant_id, holder in holders:
            first_holder.setdefault(grant_id, holder)
        held_elsewhere = {grant_id for grant_id, holder in first_holder.items() if holder != customer_id}
        return movements_as_read(rows, at or datetime.now(UTC), held_elsewhere)

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's record (the newest ``bastionary.customer.upserted.v1``), or None."""
        rows = self.client.query(
            "SELECT customer_id, name, email, address, tax_id, tax_exempt, auto_topup, credit_limit, updated_at"
            " FROM customers FINAL"
            " WHERE customer_id = {c:String}",
            parameters={"c": customer_id},
        ).result_rows
        if not rows:
            return None
        customer, name, email, address, tax_id, exempt, topups, limit, updated = rows[0]
        return {
            "customer_id": customer,
            "name": name,
            "email": email,
            "address": orjson.loads(address),
            "tax_id": tax_id,
            "tax_exempt": bool(exempt),
            "auto_topup": orjson.loads(topups),
            "credit_limit": orjson.loads(limit) if limit else None,
            "updated_at": jsonable(updated),
        }

    def document(self, invoice_id: str) -> dict[str, Any] | None:
        """The invoice document exactly as the rater published it, or None for an unknown id."""
        rows = self.client.query(
            "SELECT document FROM invoices FINAL WHERE invoice_id = {i:String}", parameters={"i": invoice_id}
        ).result_rows
        if not rows:
            return None
        document: dict[str, Any] = orjson.loads(rows[0][0])
        return document


def movements_as_read(
    rows: list[tuple[Any, ...]], moment: datetime, held_elsewhere: Collection[str] = ()
) -> list[tuple[Any, ...]]:
    """Ledger rows (``LEDGER_COLUMNS``) as the balance at ``moment`` sees them, so that a
    grant's opening amount less its applied, expired and voided rows is its balance.

    A grant is its id's first opening row: a later grant of the id (a retried request with a
    new event id, an id reused for another amount), and a grant of an id another customer's
    grant holds (``held_elsewhere``), open nothing and show 0, as the balance ignores them.

    A void is stored with amount 0 and no currency: when it arrives, an invoice for a period
    ending before its ``effective_at`` may still draw on the grant, so only a read knows what
    was left. Once in effect (``effective_at`` at or before ``moment``) the grant's earliest
    void, the one that counts (``ClickHouseBillingStore.grants_as_of``), takes the remainder
    after every stored invoice's draws, a positive amount like an ``applied`` one; a later
    void, and a void not yet in effect, take 0. Each void of a known grant is shown in the
    grant's currency.

    An ``expired`` row is stored only by an invoice of the customer rated after the expiry,
    and the customer may have none (a subscription ended, credit granted ahead of one): until
    one is stored, a grant expired by ``moment`` (and not voided by then: a void wins) shows
    its remainder as an ``expired`` row without an invoice, recorded at the expiry, with id
    ``movement_id("expired", grant_id, "")``. The invoice's own row then takes its place."""
    kind_at, grant_at, amount_at, currency_at, effective_at, expires_at = (
        LEDGER_COLUMNS.index(name) for name in ("kind", "grant_id", "amount", "currency", "effective_at", "expires_at")
    )
    opened: dict[str, tuple[Decimal, str, datetime | None]] = {}
    opening: set[int] = set()
    drawn: defaultdict[str, Decimal] = defaultdict(Decimal)
    first_void: dict[str, tuple[datetime, int]] = {}
    for position, row in enumerate(rows):
        kind, grant_id = row[kind_at], row[grant_at]
        if kind in FUNDING_OF_KIND:
            if grant_id not in opened and grant_id not in held_elsewhere:
                opened[grant_id] = (Decimal(row[amount_at]), row[currency_at], utc(row[expires_at]))
                opening.add(position)
        elif kind == "voided":
            void_at = utc(row[effective_at])
            if grant_id not in first_void or void_at < first_void[grant_id][0]:
                first_void[grant_id] = (void_at, position)
        else:
            drawn[grant_id] += Decimal(row[amount_at])
    out = []
    for position, row in enumerate(rows):
        kind, grant_id = row[kind_at], row[grant_at]
        if kind in FUNDING_OF_KIND and position not in opening:
            out.append(_with_amount(row, Decimal(0), row[currency_at]))
            continue
        if kind != "voided" or grant_id not in opened:  # no grant of this customer to take from
            out.append(row)
            continue
        granted, currency, _ = opened[grant_id]
        void_at, first = first_void[grant_id]
        taken = Decimal(0)
        if position == first and void_at <= moment:
            taken = max(granted - drawn[grant_id], Decimal(0))
        out.append(_with_amount(row, taken, currency))
    lapsed = []
    for grant_id, (granted, currency, expires) in opened.items():
        left = granted - drawn[grant_id]
        voided = grant_id in first_void and first_void[grant_id][0] <= moment
        if expires is not None and expires <= moment and left > 0 and not voided:
            lapse = {
                "movement_id": movement_id("expired", grant_id, ""),
                "kind": "expired",
                "grant_id": grant_id,
                "amount": left,
                "currency": currency,
                "effective_at": expires,
                "expires_at": expires,
                "invoice_id": "",
                "recorded_at": expires,
                "price_paid": None,
                "payment_reference": "",
            }
            lapsed.append(tuple(lapse[name] for name in LEDGER_COLUMNS))
    recorded_at = LEDGER_COLUMNS.index("recorded_at")
    return sorted(out + lapsed, key=lambda row: utc(row[recorded_at])) if lapsed else out


def _with_amount(row: tuple[Any, ...], amount: Decimal, currency: str) -> tuple[Any, ...]:
    shown = list(row)
    shown[LEDGER_COLUMNS.index("amount")], shown[LEDGER_COLUMNS.index("currency")] = amount, currency
    return tuple(shown)


def money_text(value: Decimal | None, currency: str) -> str | None:
    """An amount at its currency's precision (``10.00``; JPY ``1000``): the one format for
    amounts, as invoices carry them. Quantities and rates stay exact (:func:`number`)."""
    if value is None:
        return None
    return format_money(Decimal(value), currency) if currency in MINOR_UNITS else number(Decimal(value))


def number(value: Decimal | float | int | None) -> str | None:
    """An exact JSON-safe string with no trailing zeros (Decimals are never turned into floats)."""
    if value is None:
        return None
    return plain_decimal(value) if isinstance(value, Decimal) else str(value)


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        # In UTC whatever the host's zone: clickhouse-connect returns a DateTime('UTC') in the
        # local zone, and 2024-04-30T20:00:00-04:00 reads as a New York day, not the UTC one.
        return (value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, Decimal):
        return number(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    # An array, tuple or map of a `bastionary sql` answer: its values in the same format as
    # those outside one (left as they came, a time lost its zone, a Decimal kept its scale's
    # zeros, the table printed Python reprs), and its keys as text, the only keys JSON has.
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(jsonable(key)): jsonable(item) for key, item in value.items()}
    return value
