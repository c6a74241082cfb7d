"""ClickHouse reads and writes for credit limits: what was announced, and what is unpaid."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from decimal import Decimal

import orjson

from bastionary.rating.amount_due import amount_due
from bastionary.rating.spend import SpendEvent, SpendHistory
from bastionary.storage.client import Client, insert_rows

ZERO = Decimal(0)
COLUMNS = (
    "event_id",
    "customer_id",
    "kind",
    "currency",
    "share",
    "period_start",
    "exposure",
    "credit_limit",
    "at",
    "document",
    "published",
)


class ClickHouseSpendStore:
    def __init__(self, client: Client) -> None:
        self.client = client

    def history(self) -> dict[tuple[str, str], SpendHistory]:
        """(customer, currency) -> what was announced before."""
        out: dict[tuple[str, str], SpendHistory] = {}
        rows = self.client.query(
            "SELECT customer_id, currency, kind, share, period_start, credit_limit FROM spend_events FINAL"
            " ORDER BY at, event_id"
        )
        for customer, currency, kind, share, period, limit in rows.result_rows:
            history = out.setdefault((customer, currency), SpendHistory())
            if kind == "threshold_crossed":
                history.alerts.add((share, period))
            else:
                history.changes += 1
                history.limit = Decimal(limit)  # ordered by time: the last change's
        return out

    def unpaid(self, customers: Collection[str]) -> dict[str, dict[str, Decimal]]:
        """customer -> currency -> what its issued invoices still ask: each finalized invoice's
        amount due after payments, refunds and credit notes, reckoned as dunning and the credit
        note decision reckon it (``rating/amount_due.py``); a voided one asks nothing. Read from
        the rater's ``invoices`` (an invoice counts the moment it is stored, before dunning has
        read it) and dunning's ``payments``."""
        invoices = self.client.query(
            "SELECT invoice_id, customer_id, currency, total FROM invoices FINAL"
            " WHERE customer_id IN {cs:Array(String)} AND status = 'finalized'",
            parameters={"cs": list(customers)},
        ).result_rows
        if not invoices:
            return {}
        sums: dict[str, dict[str, Decimal]] = {}
        for invoice_id, kind, amount in self.client.query(
            "SELECT invoice_id, kind, sum(amount) FROM payments FINAL WHERE invoice_id IN {ids:Array(String)}"
            " GROUP BY invoice_id, kind",
            parameters={"ids": [row[0] for row in invoices]},
        ).result_rows:
            kinds = sums.setdefault(invoice_id, {})
            kinds[kind] = kinds.get(kind, ZERO) + Decimal(amount)
        out: dict[str, dict[str, Decimal]] = {}
        for invoice_id, customer, currency, total in invoices:
            kinds = sums.get(invoice_id, {})
            if "voided" in kinds:
                continue
            succeeded, refunded = kinds.get("succeeded", ZERO), kinds.get("refunded", ZERO)
            # Netting payments against notes alone counted what a note gave back as still paying
            # the invoice: paid 100.00, 30.00 given back, 50.00 charged back left 20.00 unpaid
            # where dunning chases 50.00.
            due = amount_due(
                Decimal(total),
                succeeded - refunded,
                kinds.get("credited", ZERO),
                kinds.get("given_back", ZERO),
                refunded,
                kinds.get("note_refunded", ZERO),
            )
            by_currency = out.setdefault(customer, {})
            by_currency[currency] = by_currency.get(currency, ZERO) + due
        return out

    def store(self, events: list[SpendEvent], published: int = 0) -> None:
        rows = [
            (
                event.event_id,
                event.customer_id,
                event.kind,
                event.currency,
                event.share,
                event.data.get("period_start") or "",
                Decimal(event.data["exposure"]),
                Decimal(event.data["limit"]),
                datetime.fromisoformat(event.data["at"]),
                orjson.dumps({"type": event.event_type, "data": event.data}).decode(),
                published,
            )
            for event in events
        ]
        if rows:
            insert_rows(self.client, "spend_events", rows, COLUMNS)

    def unpublished(self) -> list[SpendEvent]:
        rows = self.client.query(
            "SELECT event_id, kind, customer_id, currency, share, document, published FROM spend_events FINAL"
        ).result_rows
        out = []
        for event_id, kind, customer, currency, share, document, published in rows:
            if published:  # filtered after FINAL: the published row replaces its first write
                continue
            stored = orjson.loads(document)
            out.append(SpendEvent(event_id, stored["type"], kind, customer, currency, share, stored["data"]))
        return out
