"""Credit note desk bugs found by the review of 2026-12-08 (forty-seventh session), each confirmed
by a script first (/tmp/review47_desk/) and stated here as a test that failed before its fix."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.credit_notes import Standing, credit_note_id
from bastionary.rating.publishing import PublishRefused
from tests.unit.test_credit_notes import ASKED, NOW, FakeNotes, request
from tests.unit.test_rater_review46 import worker_publish

# A broker whose message.max.bytes is 256 KiB: it refuses a ~310 KB decision on delivery.
BROKER_LIMIT = 256 * 1024
WIDE_LINES = [{"description": "\x01" * 512, "amount": "0.10"} for _ in range(100)]
LATER, LATEST = NOW + timedelta(days=1), NOW + timedelta(days=2)
NAMES = {credit_note_id(customer, note): note for customer in ("c1", "c2") for note in ("cn-1", "cn-2", "cn-3", "cn-4")}


def _paid_invoice(invoice: str, customer: str = "c1") -> Standing:
    return Standing(invoice, customer, "USD", Decimal("100.00"), Decimal(100), Decimal(0), Decimal(0))


def _names(documents: list[dict[str, Any]]) -> list[str]:
    return [NAMES[document["credit_note_id"]] for document in documents]


def _versions(notes: FakeNotes) -> dict[str, int]:
    return {NAMES[note]: version for note, (_, _, version) in notes.decided.items()}


class Broker:
    """Publishes on ``billing.invoices``, recording the credit notes it took in order; refuses
    for good the notes named in ``refusing`` (on delivery, as a broker does for its size) and
    fails the delivery of those in ``away`` (the broker gone: the run fails)."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.refusing: set[str] = set()
        self.away: set[str] = set()

    async def __call__(self, role: str, key: str, value: bytes) -> Any:
        note = NAMES[orjson.loads(value)["data"]["credit_note_id"]]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if note in self.refusing:
            done.set_exception(PublishRefused(f"{note} is too large"))
        elif note in self.away:
            done.set_exception(ConnectionError("broker away"))
        else:
            self.taken.append(note)
            done.set_result(None)
        return done


def _one_invoice_and_another() -> FakeNotes:
    """c1's cn-1 and cn-2 credit inv-1, in that order, and cn-3 inv-2; cn-1 is larger than the
    broker takes."""
    notes = FakeNotes({"inv-1": _paid_invoice("inv-1"), "inv-2": _paid_invoice("inv-2")})
    notes.pending = [
        ("e1", ASKED, request(credit_note_id="cn-1", invoice_id="inv-1", lines=WIDE_LINES)),
        ("e2", ASKED, request(credit_note_id="cn-2", invoice_id="inv-1", amount="10")),
        ("e3", ASKED, request(credit_note_id="cn-3", invoice_id="inv-2", amount="5")),
    ]
    return notes


def test_a_later_note_of_an_invoice_waits_while_an_earlier_one_is_refused_by_the_broker():
    """cn-2 was published while cn-1, decided before it for the same invoice, was refused and
    offered again at every run; a note requested later (cn-4) went past it too. Dunning, which
    reduces what is due by the notes it reads, saw the later notes without the earlier one."""
    notes, sent, ledger = _one_invoice_and_another(), [], []
    limit: dict[str, Any] = {"bytes": BROKER_LIMIT, "at_broker": True}
    desk = CreditNoteDesk(notes, ledger.extend, worker_publish(sent, limit))

    first = asyncio.run(desk.run_once(NOW))
    notes.pending.append(("e4", NOW, request(credit_note_id="cn-4", invoice_id="inv-1", amount="1")))
    again = asyncio.run(desk.run_once(LATER))

    assert _names(first) == ["cn-3"]  # the other invoice's note goes on
    assert again == []
    assert sent == [("invoices", "inv-2")]
    assert _versions(notes) == {"cn-1": 1, "cn-2": 1, "cn-3": 2, "cn-4": 1}
    # Decided for good: each note's credit is in the balance while it waits.
    assert {NAMES[row.grant_id] for row in ledger} == {"cn-1", "cn-2", "cn-3", "cn-4"}

    limit["bytes"] = 10 * BROKER_LIMIT
    lifted = asyncio.run(desk.run_once(LATEST))
    assert _names(lifted) == ["cn-1", "cn-2", "cn-4"]
    assert sent == [("invoices", "inv-2"), ("invoices", "inv-1"), ("invoices", "inv-1"), ("invoices", "inv-1")]
    assert set(_versions(notes).values()) == {2}


def test_a_waiting_note_is_logged_once_per_run_with_its_customer_invoice_and_credit_note():
    notes, ledger, broker = _one_invoice_and_another(), [], Broker()
    broker.refusing.add("cn-1")
    desk = CreditNoteDesk(notes, ledger.extend, broker)
    for now in (NOW, LATER):
        with capture_logs() as logs:
            asyncio.run(desk.run_once(now))
        (waiting,) = [entry for entry in logs if "earlier note of its invoice" in entry["event"]]
        assert waiting["log_level"] == "warning"
        assert (waiting["customer_id"], waiting["invoice_id"], waiting["credit_note_id"]) == (
            "c1",
            "inv-1",
            credit_note_id("c1", "cn-2"),
        )
        assert waiting["waiting_for"] == credit_note_id("c1", "cn-1")
    assert broker.taken == ["cn-3"]


def test_a_later_note_of_an_invoice_is_not_sent_while_the_earlier_ones_delivery_fails():
    """Enqueued together, the later note was delivered while the earlier one failed: the next
    run republished the earlier one after it."""
    notes, ledger, broker = _one_invoice_and_another(), [], Broker()
    notes.pending[0] = ("e1", ASKED, request(credit_note_id="cn-1", invoice_id="inv-1", amount="20"))
    broker.away.add("cn-1")
    with pytest.raises(ConnectionError):
        asyncio.run(CreditNoteDesk(notes, ledger.extend, broker).run_once(NOW))
    assert "cn-2" not in broker.taken

    broker.away.clear()
    asyncio.run(CreditNoteDesk(notes, ledger.extend, broker).run_once(LATER))
    assert [note for note in broker.taken if note in ("cn-1", "cn-2")] == ["cn-1", "cn-2"]
    assert set(_versions(notes).values()) == {2}


class ListedByRequestTime(FakeNotes):
    """Lists unpublished decisions as ``ClickHouseCreditNoteStore`` does: by request time."""

    def unpublished(self) -> list[tuple[dict[str, Any], Decimal]]:
        return sorted(
            super().unpublished(),
            key=lambda listed: (datetime.fromisoformat(listed[0]["requested_at"]), listed[0]["credit_note_id"]),
        )


def test_an_invoices_notes_go_out_in_decision_order_whatever_order_the_store_lists_them():
    """A request received after a note of its invoice was decided may carry an earlier time:
    decided after that note (and against it), it was listed before it and went out first."""
    notes, ledger, broker = ListedByRequestTime({"inv-1": _paid_invoice("inv-1")}), [], Broker()
    notes.pending = [("e2", ASKED + timedelta(minutes=30), request(credit_note_id="cn-2", amount="10"))]
    broker.refusing.add("cn-2")
    desk = CreditNoteDesk(notes, ledger.extend, broker)
    asyncio.run(desk.run_once(NOW))
    notes.pending.append(("e1", ASKED, request(credit_note_id="cn-1", amount="20")))
    asyncio.run(desk.run_once(LATER))
    assert broker.taken == []

    broker.refusing.clear()
    published = asyncio.run(desk.run_once(LATEST))
    assert _names(published) == broker.taken == ["cn-2", "cn-1"]


def test_a_note_waits_only_behind_its_own_customers_notes_of_the_invoice():
    """Another customer's request naming c1's invoice is rejected, and its refusal holds back
    none of c1's notes (nor the other way round)."""
    notes, ledger, broker = FakeNotes({"inv-1": _paid_invoice("inv-1")}), [], Broker()
    notes.pending = [
        ("e1", ASKED, request(credit_note_id="cn-1", customer_id="c2", amount="10")),
        ("e2", ASKED, request(credit_note_id="cn-2", amount="10")),
    ]
    broker.refusing.add("cn-1")
    published = asyncio.run(CreditNoteDesk(notes, ledger.extend, broker).run_once(NOW))
    assert [(d["customer_id"], d["status"]) for d in published] == [("c1", "issued")]
    assert broker.taken == ["cn-2"]
