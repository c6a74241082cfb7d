"""Read-only reports over the billing tables, for the CLI and analysts' scripts."""

from __future__ import annotations

from typing import Any

import orjson

from bastionary.storage.client import Client

INVOICE_COLUMNS = (
    "invoice_id",
    "customer_id",
    "subscription_id",
    "plan",
    "kind",
    "period_start",
    "period_end",
    "currency",
    "subtotal",
    "credits_applied",
    "total",
    "status",
)


class InvoiceReports:
    def __init__(self, client: Client) -> None:
        self.client = client

    def invoices(self, customer_id: str | None = None) -> list[tuple[Any, ...]]:
        """Finalized invoices (one row per invoice id, the latest version), in ``INVOICE_COLUMNS`` order."""
        where, params = ("WHERE customer_id = {c:String}", {"c": customer_id}) if customer_id else ("", {})
        sql = f"SELECT {', '.join(INVOICE_COLUMNS)} FROM invoices FINAL {where} ORDER BY period_end, invoice_id"
        return [tuple(row) for row in self.client.query(sql, parameters=params).result_rows]

    def document(self, invoice_id: str) -> dict[str, Any] | None:
        """The invoice document exactly as the rater published it, or None for an unknown id."""
        rows = self.client.query(
            "SELECT document FROM invoices FINAL WHERE invoice_id = {i:String}", parameters={"i": invoice_id}
        ).result_rows
        if not rows:
            return None
        document: dict[str, Any] = orjson.loads(rows[0][0])
        return document
