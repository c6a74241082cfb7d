"""ClickHouse reads and writes for credit notes (:class:`bastionary.rating.ports.CreditNoteStore`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from bastionary.rating.credit_notes import CreditNoteRequest, Decision, Standing, credit_note_id
from bastionary.rating.events import BillingEvent
from bastionary.storage.client import Client, insert_rows
from bastionary.storage.reports import jsonable, money_text

log = structlog.get_logger(__name__)

COLUMNS = (
    "credit_note_id",
    "requested_id",
    "request_event_id",
    "invoice_id",
    "customer_id",
    "status",
    "currency",
    "amount",
    "reduces_amount_due",
    "refunded",
    "credited_to_balance",
    "requested_at",
    "issued_at",
    "request",
    "document",
    "version",
)
REQUESTED, DECIDED, PUBLISHED = 0, 1, 2
ZERO = Decimal(0)
LIST_COLUMNS = (
    "credit_note_id",
    "invoice_id",
    "customer_id",
    "status",
    "currency",
    "amount",
    "reduces_amount_due",
    "refunded",
    "credited_to_balance",
    "issued_at",
)


class ClickHouseCreditNoteStore:
    def __init__(self, client: Client) -> None:
        self.client = client

    def insert_request(self, envelope: BillingEvent, request: CreditNoteRequest) -> None:
        row = (
            credit_note_id(request.customer_id, request.credit_note_id),
            request.credit_note_id,
            envelope.id,
            request.invoice_id,
            request.customer_id,
            "requested",
            "",
            ZERO,
            ZERO,
            ZERO,
            ZERO,
            envelope.time,
            None,
            request.model_dump_json(),
            "",
            REQUESTED,
        )
        insert_rows(self.client, "credit_notes", [row], COLUMNS)

    def _rows(self, versions: tuple[int, ...]) -> list[tuple[Any, ...]]:
        # Filtered after FINAL: a decided row replaces its request.
        rows = self.client.query(
            "SELECT request_event_id, request, document, credited_to_balance, customer_id, version, requested_at,"
            " credit_note_id FROM credit_notes FINAL ORDER BY requested_at, credit_note_id"
        ).result_rows
        return [row for row in rows if row[5] in versions]

    def requests(self) -> list[tuple[str, datetime, CreditNoteRequest]]:
        """Requests not decided yet, oldest first: (request event id, its time, request).

        One stored that no longer reads as a request (stored under laxer rules, or edited by
        hand) is left out, with its customer's later ones, as the desk leaves a request it cannot
        decide: raised, it stopped every customer's credit notes at every run."""
        out = []
        stopped: set[str] = set()
        for row in self._rows((REQUESTED,)):
            customer = row[4]
            if customer in stopped:
                continue
            try:
                request = CreditNoteRequest.model_validate_json(row[1])
            except ValidationError as exc:
                stopped.add(customer)
                _tell_unreadable(customer, row[7], row[0], exc)
                continue
            out.append((row[0], row[6].replace(tzinfo=UTC), request))
        return out

    def unpublished(self) -> list[tuple[dict[str, Any], Decimal]]:
        """Decisions stored but not confirmed published: (document, credited to balance)."""
        return [(orjson.loads(row[2]), Decimal(row[3])) for row in self._rows((DECIDED,))]

    def standing(self, invoice_id: str) -> Standing | None:
        """The invoice as stored by the rater, what was paid for it, whether it was voided, and its
        issued credit notes."""
        invoices = self.client.query(
            "SELECT customer_id, currency, total, credits_applied, JSONExtractRaw(document, 'tax_lines')"
            " FROM invoices FINAL WHERE invoice_id = {i:String} AND status != 'empty'",
            parameters={"i": invoice_id},
        ).result_rows
        if not invoices:
            return None
        customer, currency, total, credits_applied, tax_lines = invoices[0]
        # A ``voided`` row (a ``bastionary.invoice.voided.v1``, or a void note as dunning read it)
        # cancels the invoice for good: the decision rejects any note for it.
        succeeded, refunded, voids = self.client.query(
            "SELECT sumIf(amount, kind = 'succeeded'), sumIf(amount, kind = 'refunded'), countIf(kind = 'voided')"
            " FROM payments FINAL WHERE invoice_id = {i:String}",
            parameters={"i": invoice_id},
        ).result_rows[0]
        credited, reduced, notes_refunded = self.client.query(
            "SELECT sum(amount), sum(reduces_amount_due), sum(refunded) FROM credit_notes FINAL"
            " WHERE customer_id = {c:String} AND invoice_id = {i:String} AND status = 'issued'",
            parameters={"c": customer, "i": invoice_id},
        ).result_rows[0]
        succeeded, refunded = Decimal(succeeded or 0), Decimal(refunded or 0)
        return Standing(
            invoice_id,
            customer,
            currency,
            Decimal(total),
            succeeded - refunded,
            Decimal(credited),
            Decimal(reduced),
            refunded,
            Decimal(notes_refunded or 0),
            Decimal(credits_applied),
            voided=voids > 0,
            tax_lines=_tax_lines(tax_lines),
        )

    def unpublished_invoices(self, invoices: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """Of ``invoices`` (customer id, invoice id), those stored but not yet on billing.invoices
        (the broker refused them): one query for them all. An ``empty`` invoice is never
        published, and takes no note: its rejections do not wait for it."""
        if not invoices:
            return set()
        rows = self.client.query(
            "SELECT customer_id, invoice_id FROM invoices FINAL"
            " WHERE customer_id IN {c:Array(String)} AND invoice_id IN {i:Array(String)}"
            " AND published = 0 AND status != 'empty'",
            parameters={"c": sorted({c for c, _ in invoices}), "i": sorted({i for _, i in invoices})},
        ).result_rows
        return {(customer, invoice) for customer, invoice in rows} & set(invoices)

    def store(self, decisions: list[tuple[str, CreditNoteRequest, Decision]], version: int = DECIDED) -> None:
        rows = []
        for event_id, request, decision in decisions:
            data = decision.document
            issued = decision.issued

            def amount(name: str, data: dict[str, Any] = data, issued: bool = issued) -> Decimal:
                return Decimal(data[name]) if issued else ZERO

            rows.append(
                (
                    decision.credit_note_id,
                    request.credit_note_id,
                    event_id,
                    request.invoice_id,
                    request.customer_id,
                    decision.status,
                    data.get("currency", ""),
                    amount("amount"),
                    amount("reduces_amount_due"),
                    amount("refunded"),
                    amount("credited_to_balance"),
                    datetime.fromisoformat(data["requested_at"]),
                    datetime.fromisoformat(data["issued_at"]),
                    request.model_dump_json(),
                    orjson.dumps(data).decode(),
                    version,
                )
            )
        if rows:
            insert_rows(self.client, "credit_notes", rows, COLUMNS)

    def mark_published(self, documents: list[dict[str, Any]]) -> None:
        """Rewrite each decision (as stored) with version 2."""
        if not documents:
            return
        ids = [document["credit_note_id"] for document in documents]
        rows = self.client.query(
            f"SELECT {', '.join(COLUMNS)} FROM credit_notes FINAL WHERE credit_note_id IN {{ids:Array(String)}}",
            parameters={"ids": ids},
        ).result_rows
        published = [(*row[:-1], PUBLISHED) for row in rows if row[-1] == DECIDED]
        if published:
            insert_rows(self.client, "credit_notes", published, COLUMNS)

    # -- reports -------------------------------------------------------------------------

    def summaries(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        """:meth:`listing` JSON-ready, amounts at the currency's precision."""
        out = []
        for row in self.listing(customer_id):
            note = dict(zip(LIST_COLUMNS, map(jsonable, row), strict=True))
            for name in ("amount", "reduces_amount_due", "refunded", "credited_to_balance"):
                note[name] = money_text(row[LIST_COLUMNS.index(name)], note["currency"])
            out.append(note)
        return out

    def listing(self, customer_id: str | None = None) -> list[tuple[Any, ...]]:
        """Decided credit notes (issued and rejected), in ``LIST_COLUMNS`` order, oldest first."""
        where, params = ("WHERE customer_id = {c:String}", {"c": customer_id}) if customer_id else ("", {})
        rows = self.client.query(
            f"SELECT {', '.join(LIST_COLUMNS)}, version FROM credit_notes FINAL {where}"
            " ORDER BY issued_at, credit_note_id",
            parameters=params,
        ).result_rows
        return [tuple(row[:-1]) for row in rows if row[-1] != REQUESTED]

    def document(self, note_id: str) -> dict[str, Any] | None:
        rows = self.client.query(
            "SELECT document, version FROM credit_notes FINAL WHERE credit_note_id = {i:String}",
            parameters={"i": note_id},
        ).result_rows
        if not rows or rows[0][1] == REQUESTED:
            return None
        document: dict[str, Any] = orjson.loads(rows[0][0])
        return document


def _tell_unreadable(customer_id: str, note_id: str, event_id: str, exc: ValidationError) -> None:
    log.error(
        "credit note not decided: its stored request cannot be read; the customer's requests wait, retried next run",
        customer_id=customer_id,
        credit_note_id=note_id,
        request_event_id=event_id,
        error=str(exc)[:500],
    )


def _tax_lines(raw: str) -> tuple[dict[str, Any], ...]:
    """The invoice document's ``tax_lines`` ('' for a document without them). A document this
    code did not write (edited by hand, or damaged) gives none: its notes then carry no tax
    part, rather than stopping every credit note's decision."""
    try:
        lines = orjson.loads(raw or "[]")
        if isinstance(lines, list) and all(_tax_line(line) for line in lines):
            return tuple(lines)
    except orjson.JSONDecodeError:
        pass
    log.warning("an invoice's tax_lines cannot be read: its credit notes carry no tax part", tax_lines=raw[:200])
    return ()


def _tax_line(line: object) -> bool:
    if not isinstance(line, dict) or not {"key", "name", "rate", "inclusive", "taxable", "amount"} <= line.keys():
        return False
    try:
        return Decimal(line["taxable"]).is_finite() and Decimal(line["amount"]).is_finite()
    except (ArithmeticError, TypeError, ValueError):
        return False
