"""The credit note desk: decides the requests of the customers this worker rates, and
publishes the decisions. Run by the billing service after each rating run.

Order per run, and what a crash right after each step does:
1. read what an earlier run decided but did not confirm: it goes out with this run's
   decisions, through steps 4-6, as stored
2. decide each request, oldest first, against the stored invoice, its payments and the
   credit notes issued before (pure; reads only)     -> nothing written: decided again.
   A request whose deciding raises stays undecided, with the customer's later ones, and is
   tried again next run; the other customers' are decided
3. store the decisions (``credit_notes`` version 1)   -> decided for good: never decided
   again, published as stored by the next run (step 1)
4. write each issued note's ``credit_note`` ledger row (what goes to the customer's
   balance)                                           -> rewritten before each publish
   under the same movement id, so it lands once
5. publish ``credit_note.issued`` / ``.rejected`` on ``billing.invoices`` keyed by invoice
   id                                                 -> republished by the next run;
   consumers dedupe on ``credit_note_id`` (the content is identical). A decision the broker
   refuses for good (``PublishRefused``: larger than it takes) stays stored unpublished,
   offered again at every run, and the others are published, as the rater does with an
   invoice: one customer's note must not stop every customer's. But each invoice's notes
   reach the topic in decision order (dunning reckons what is due from the notes it has
   read): a note waits, stored unpublished and offered again next run, while an earlier
   note of its invoice is unpublished. So the notes go out in rounds, the first
   unpublished note of each invoice, then the next once that one is delivered. The notes of
   an invoice stored but not published yet (the broker refused the invoice) wait the same way,
   until the rater publishes it: dunning, which has not read the invoice, would dead-letter
   them (``unknown_invoice``)
6. mark version 2 those delivered, after each round   -> done

Between steps 3 and 4 the balance lacks the credit for a moment: an invoice rated then
draws it later, never twice. One customer's requests are decided by one worker (``owns``),
so two notes never credit the same invoice concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
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
    credit_note_id,
    decide,
)
from bastionary.rating.publishing import Publish, PublishRefused, publish_each
from bastionary.rating.rater import CARRIED_PRIORITY, PRICING_ERRORS
from bastionary.rating.rows import LedgerRow

log = structlog.get_logger(__name__)


class CreditNoteStore(Protocol):
    def requests(self) -> list[tuple[str, datetime, CreditNoteRequest]]: ...

    def unpublished(self) -> list[tuple[dict[str, Any], Decimal]]: ...

    def standing(self, invoice_id: str) -> Standing | None: ...

    def unpublished_invoices(self, invoices: Collection[tuple[str, str]]) -> set[tuple[str, str]]: ...

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
        return await self._deliver(documents) if documents else []

    def _decide(
        self, pending: list[tuple[str, datetime, CreditNoteRequest]], now: datetime
    ) -> list[tuple[str, CreditNoteRequest, Decision]]:
        standings: dict[str, Standing | None] = {}
        stopped: set[str] = set()  # customers with a request that could not be decided this run
        out = []
        for event_id, requested_at, request in pending:
            if request.customer_id in stopped:  # decided in the order received, so the later ones wait
                continue
            if request.invoice_id not in standings:
                standings[request.invoice_id] = self.store.standing(request.invoice_id)
            standing = standings[request.invoice_id]
            if standing is not None and standing.customer_id != request.customer_id:
                # Rejected as unknown, not as another customer's: the reason is the requester's
                # to read, and told that the id exists for someone else they could probe for it.
                _tell_foreign_invoice(request, standing.customer_id)
                standing = None
            try:
                decision = decide(event_id, requested_at, request, standing, now)
            except PRICING_ERRORS as exc:
                # One customer's request must not stop every customer's: it stays undecided,
                # tried again next run, and that customer's later requests wait behind it.
                stopped.add(request.customer_id)
                _tell_undecided(request, exc)
                continue
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

    async def _deliver(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Publish ``documents`` (:func:`publish_each`), each invoice's in decision order, mark
        those delivered and return them. One the broker refuses for good is logged and stays
        unpublished, and so do its invoice's later notes, and the notes of an invoice not
        published yet; any other failure fails the run, and the next one republishes what was
        stored."""
        recorded = datetime.now(UTC)
        rows = [
            balance_row(document, recorded)
            for document in documents
            if document["status"] == "issued" and Decimal(document["credited_to_balance"]) > 0
        ]
        if rows:
            await asyncio.to_thread(self.insert_ledger, rows)

        async def enqueue(document: dict[str, Any]) -> Awaitable[object]:
            event_type = CREDIT_NOTE_ISSUED if document["status"] == "issued" else CREDIT_NOTE_REJECTED
            value = cloud_event(
                event_type,
                document["credit_note_id"],
                "bastionary/rater",
                document["customer_id"],
                document["issued_at"],
                document,
            )
            return await self.publish("invoices", document["invoice_id"], value)

        # The store lists what is unpublished by request time, not by when it was decided: a
        # request received late may carry an earlier time than a note decided before it. Stable,
        # so notes decided in one run keep the order they were decided in.
        documents = sorted(documents, key=lambda document: datetime.fromisoformat(document["issued_at"]))
        by_invoice: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for document in documents:  # per customer too: another customer's note for it is theirs
            by_invoice.setdefault((document["customer_id"], document["invoice_id"]), []).append(document)
        # One query for every invoice in play, not one per note.
        for invoice in await asyncio.to_thread(self.store.unpublished_invoices, list(by_invoice)):
            for waiting in by_invoice.pop(invoice):
                _tell_invoice_unpublished(waiting)
        delivered: list[dict[str, Any]] = []
        while by_invoice:
            # The next note of an invoice is enqueued once the one before is delivered: enqueued
            # together, the broker could refuse the earlier and take the later.
            heads = [notes.pop(0) for notes in by_invoice.values()]
            published = await publish_each(heads, enqueue, _tell_refused)
            if published:
                await asyncio.to_thread(self.store.mark_published, published)
            delivered += published
            taken = {document["credit_note_id"] for document in published}
            for head in heads:
                if head["credit_note_id"] not in taken:
                    for waiting in by_invoice.pop((head["customer_id"], head["invoice_id"])):
                        _tell_waiting(waiting, head)
            by_invoice = {invoice: notes for invoice, notes in by_invoice.items() if notes}
        return delivered


def _tell_undecided(request: CreditNoteRequest, exc: Exception) -> None:
    log.error(
        "credit note not decided: deciding it failed; the customer's requests wait, retried next run",
        customer_id=request.customer_id,
        credit_note_id=credit_note_id(request.customer_id, request.credit_note_id),
        requested_id=request.credit_note_id,
        invoice_id=request.invoice_id,
        error=repr(exc),
    )


def _tell_foreign_invoice(request: CreditNoteRequest, invoice_customer_id: str) -> None:
    log.warning(
        "credit note request names another customer's invoice: rejected as an unknown invoice",
        customer_id=request.customer_id,
        credit_note_id=credit_note_id(request.customer_id, request.credit_note_id),
        requested_id=request.credit_note_id,
        invoice_id=request.invoice_id,
        invoice_customer_id=invoice_customer_id,
    )


def _tell_waiting(document: dict[str, Any], earlier: dict[str, Any]) -> None:
    log.warning(
        "credit note decided but not published: an earlier note of its invoice is unpublished;"
        " offered again every run, published once that one is",
        customer_id=document["customer_id"],
        credit_note_id=document["credit_note_id"],
        requested_id=document["requested_id"],
        invoice_id=document["invoice_id"],
        status=document["status"],
        waiting_for=earlier["credit_note_id"],
    )


def _tell_invoice_unpublished(document: dict[str, Any]) -> None:
    log.warning(
        "credit note decided but not published: its invoice is not published yet; offered again"
        " every run, published once the invoice is",
        customer_id=document["customer_id"],
        credit_note_id=document["credit_note_id"],
        requested_id=document["requested_id"],
        invoice_id=document["invoice_id"],
        status=document["status"],
    )


def _tell_refused(document: dict[str, Any], exc: PublishRefused) -> None:
    log.error(
        "credit note decided but not published: the broker refuses it; offered again every run,"
        " while the other invoices' decisions are published",
        customer_id=document["customer_id"],
        credit_note_id=document["credit_note_id"],
        requested_id=document["requested_id"],
        invoice_id=document["invoice_id"],
        status=document["status"],
        error=str(exc),
    )
