"""The credit note desk: decides the requests of the customers this worker rates, and
publishes the decisions. Run by the billing service after each rating run.

Order per run, and what a crash right after each step does:
1. publish what an earlier run decided but did not confirm (steps 3-5 for those)
2. decide each request, oldest first, against the stored invoice, its payments and the
   credit notes issued before (pure; reads only)     -> nothing written: decided again
3. store the decisions (``credit_notes`` version 1)   -> decided for good: never decided
   again, published as stored by the next run (step 1)
4. write each issued note's ``credit_note`` ledger row (what goes to the customer's
   balance)                                           -> rewritten before each publish
   under the same movement id, so it lands once
5. publish ``credit_note.issued`` / ``.rejected`` on ``billing.invoices`` keyed by invoice
   id                                                 -> republished by the next run;
   consumers dedupe on ``credit_note_id`` (the content is identical)
6. mark version 2                                     -> done

Between steps 3 and 4 the balance lacks the credit for a moment: an invoice rated then
draws it later, never twice. One customer's requests are decided by one worker (``owns``),
so two notes never credit the same invoice concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog

from bastionary.credits.ledger import movement_id
from bastionary.outbound import cloud_event
from bastionary.rating.credit_notes import (
    CREDIT_NOTE_ISSUED,
    CREDIT_NOTE_REJECTED,
    CreditNoteRequest,
    Decision,
    Standing,
    decide,
)
from bastionary.rating.rater import CARRIED_PRIORITY, Publish
from bastionary.rating.rows import LedgerRow

log = structlog.get_logger(__name__)


class CreditNoteStore(Protocol):
    def requests(self) -> list[tuple[str, datetime, CreditNoteRequest]]: ...

    def unpublished(self) -> list[tuple[dict[str, Any], Decimal]]: ...

    def standing(self, invoice_id: str) -> Standing | None: ...

    def store(self, decisions: list[tuple[str, CreditNoteRequest, Decision]]) -> None: ...

    def mark_published(self, documents: list[dict[str, Any]]) -> None: ...


def balance_row(document: dict[str, Any], recorded: datetime) -> LedgerRow:
    """What an issued note gives to the customer's balance: a grant of its own, drawn like a
    carried balance (after promotional and paid credit), never expiring."""
    note = document["credit_note_id"]
    return LedgerRow(
        movement_id("credit_note", note),
        "credit_note",
        note,
        document["customer_id"],
        Decimal(document["credited_to_balance"]),
        document["currency"],
        CARRIED_PRIORITY,
        datetime.fromisoformat(document["issued_at"]),
        None,
        document["invoice_id"],
        recorded,
    )


class CreditNoteDesk:
    def __init__(
        self,
        store: CreditNoteStore,
        insert_ledger: Callable[[list[LedgerRow]], None],
        publish: Publish,
        owns: Callable[[str], bool] = lambda customer: True,
    ):
        self.store = store
        self.insert_ledger = insert_ledger
        self.publish = publish
        self.owns = owns

    async def run_once(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Decide and publish; returns the documents published by this run."""
        now = now or datetime.now(UTC)
        undelivered = [
            doc for doc, _ in await asyncio.to_thread(self.store.unpublished) if self.owns(doc["customer_id"])
        ]
        pending = [r for r in await asyncio.to_thread(self.store.requests) if self.owns(r[2].customer_id)]
        decisions = await asyncio.to_thread(self._decide, pending, now) if pending else []
        if decisions:
            await asyncio.to_thread(self.store.store, decisions)
        documents = undelivered + [decision.document for _, _, decision in decisions]
        if documents:
            await self._deliver(documents)
        return documents

    def _decide(
        self, pending: list[tuple[str, datetime, CreditNoteRequest]], now: datetime
    ) -> list[tuple[str, CreditNoteRequest, Decision]]:
        standings: dict[str, Standing | None] = {}
        out = []
        for event_id, requested_at, request in pending:
            if request.invoice_id not in standings:
                standings[request.invoice_id] = self.store.standing(request.invoice_id)
            standing = standings[request.invoice_id]
            decision = decide(event_id, requested_at, request, standing, now)
            if decision.issued and standing is not None:  # the next request for it sees this one
                amount, reduced, refunded = (
                    Decimal(decision.document[k]) for k in ("amount", "reduces_amount_due", "refunded")
                )
                standings[request.invoice_id] = replace(
                    standing,
                    credited=standing.credited + amount,
                    reduced=standing.reduced + reduced,
                    notes_refunded=standing.notes_refunded + refunded,
                    voided=standing.voided or decision.document["voids_invoice"],  # as the store reads a void note
                )
            log.info(
                "credit note decided",
                credit_note_id=decision.credit_note_id,
                invoice_id=request.invoice_id,
                status=decision.status,
                rejection=decision.document.get("rejection"),
            )
            out.append((event_id, request, decision))
        return out

    async def _deliver(self, documents: list[dict[str, Any]]) -> None:
        recorded = datetime.now(UTC)
        rows = [
            balance_row(document, recorded)
            for document in documents
            if document["status"] == "issued" and Decimal(document["credited_to_balance"]) > 0
        ]
        if rows:
            await asyncio.to_thread(self.insert_ledger, rows)
        futures = []
        for document in documents:
            event_type = CREDIT_NOTE_ISSUED if document["status"] == "issued" else CREDIT_NOTE_REJECTED
            value = cloud_event(
                event_type,
                document["credit_note_id"],
                "bastionary/rater",
                document["customer_id"],
                document["issued_at"],
                document,
            )
            futures.append(await self.publish("invoices", document["invoice_id"], value))
        await asyncio.gather(*futures)
        await asyncio.to_thread(self.store.mark_published, documents)
