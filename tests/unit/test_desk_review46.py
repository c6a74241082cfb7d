"""Credit note desk bugs found by the review of 2026-12-07 (forty-sixth session), each confirmed
by a script first (/tmp/review46_desk/) and stated here as a test that failed before its fix."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from bastionary.rating import credit_note_desk
from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.credit_notes import Standing, credit_note_id, decide
from bastionary.rating.rows import LedgerRow
from tests.unit.test_credit_notes import ASKED, NOW, FakeNotes, request
from tests.unit.test_rater_review46 import worker_publish

# A broker whose message.max.bytes is 256 KiB (some managed Kafka tiers): below the worker's
# own max request size, so the broker refuses the record on delivery.
BROKER_LIMIT = 256 * 1024
LATER = datetime(2026, 3, 6, tzinfo=UTC)
# 100 lines of 512 control characters, each escaped to 6 bytes in JSON: a ~310 KB decision.
WIDE_LINES = [{"description": "\x01" * 512, "amount": "0.10"} for _ in range(100)]
BIG, SMALL = credit_note_id("c-big", "cn-big"), credit_note_id("c1", "cn-1")


def _paid_invoice(invoice: str, customer: str) -> Standing:
    return Standing(invoice, customer, "USD", Decimal("100.00"), Decimal(100), Decimal(0), Decimal(0))


def _two_customers() -> FakeNotes:
    notes = FakeNotes(
        {
            # Sorted first, so that its decision is the first published.
            "inv-big": _paid_invoice("inv-big", "c-big"),
            "inv-1": _paid_invoice("inv-1", "c1"),
        }
    )
    notes.pending = [
        ("e-big", ASKED, request(credit_note_id="cn-big", customer_id="c-big", invoice_id="inv-big", lines=WIDE_LINES)),
        ("e-1", ASKED, request(credit_note_id="cn-1", customer_id="c1", invoice_id="inv-1", amount="10")),
    ]
    return notes


def _versions(notes: FakeNotes) -> dict[str, int]:
    return {note: version for note, (_, _, version) in notes.decided.items()}


@pytest.mark.parametrize("at_broker", [True, False], ids=["refused-by-the-broker", "refused-by-the-producer"])
def test_a_decision_the_broker_refuses_for_its_size_costs_that_note_not_every_customers_desk_run(at_broker):
    """A credit note decision larger than the broker takes raised ``PublishRefused`` out of every
    desk run, for every customer: no other decision was marked published (each was published
    again at every run, or, refused when enqueued, not at all)."""
    notes, sent, ledger = _two_customers(), [], []
    limit: dict[str, Any] = {"bytes": BROKER_LIMIT, "at_broker": at_broker}
    desk = CreditNoteDesk(notes, ledger.extend, worker_publish(sent, limit))

    first = asyncio.run(desk.run_once(NOW))
    again = asyncio.run(desk.run_once(LATER))

    assert [d["credit_note_id"] for d in first] == [SMALL]
    assert again == []  # offered again, refused again; c1's decision is not published twice
    assert _versions(notes) == {BIG: 1, SMALL: 2}
    assert sent == [("invoices", "inv-1")]
    # Decided for good: its credit is in the balance, one movement however often it is offered.
    assert {row.grant_id for row in ledger} == {BIG, SMALL}
    assert len({row.movement_id for row in ledger if row.grant_id == BIG}) == 1
    # Once the broker takes it, it goes out as decided, never decided again.
    limit["bytes"] = 10 * BROKER_LIMIT
    lifted = asyncio.run(desk.run_once(LATER))
    assert [d["credit_note_id"] for d in lifted] == [BIG]
    assert lifted[0] == notes.decided[BIG][0]
    assert lifted[0]["issued_at"] == NOW.isoformat()
    assert _versions(notes) == {BIG: 2, SMALL: 2}


def test_a_refused_decision_is_logged_with_its_customer_and_credit_note_at_every_run():
    notes, sent, ledger = _two_customers(), [], []
    desk = CreditNoteDesk(notes, ledger.extend, worker_publish(sent, {"bytes": BROKER_LIMIT, "at_broker": True}))
    for now in (NOW, LATER):
        with capture_logs() as logs:
            asyncio.run(desk.run_once(now))
        (told,) = [entry for entry in logs if entry["log_level"] == "error"]
        assert "not published" in told["event"]
        assert (told["customer_id"], told["credit_note_id"], told["invoice_id"]) == ("c-big", BIG, "inv-big")
        assert "MessageSizeTooLargeError" in told["error"]


def test_a_broker_away_still_fails_the_run_and_the_next_one_republishes():
    """Only a refusal for good costs just that note: a failed delivery of any other kind fails
    the run, as before, and nothing is marked published."""
    notes, ledger = _two_customers(), []
    notes.pending = notes.pending[1:]

    async def away(role: str, key: str, value: bytes) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_exception(ConnectionError("broker away"))
        return done

    with pytest.raises(ConnectionError):
        asyncio.run(CreditNoteDesk(notes, ledger.extend, away).run_once(NOW))
    assert _versions(notes) == {SMALL: 1}

    sent: list[tuple[str, str]] = []
    republished = asyncio.run(
        CreditNoteDesk(notes, ledger.extend, worker_publish(sent, {"bytes": BROKER_LIMIT, "at_broker": True})).run_once(
            LATER
        )
    )
    assert [orjson.dumps(d) for d in republished] == [orjson.dumps(notes.decided[SMALL][0])]
    assert _versions(notes) == {SMALL: 2}
    assert all(isinstance(row, LedgerRow) for row in ledger)


def _undecidable_first(monkeypatch: pytest.MonkeyPatch) -> FakeNotes:
    """c-big's first request raises when decided (a reason longer than a line's description did,
    until the default line took the reason whole; any bug of ours in deciding would)."""
    notes = _two_customers()
    stuck = request(credit_note_id="cn-big", customer_id="c-big", invoice_id="inv-big", amount="5")
    after = request(credit_note_id="cn-big-2", customer_id="c-big", invoice_id="inv-big", amount="7")
    notes.pending = [("e-big", ASKED, stuck), ("e-big-2", ASKED, after), notes.pending[1]]

    def deciding(event_id: str, requested_at: datetime, request: Any, standing: Any, now: datetime) -> Any:
        if request.credit_note_id == "cn-big":
            raise ValueError("a bug of ours")
        return decide(event_id, requested_at, request, standing, now)

    monkeypatch.setattr(credit_note_desk, "decide", deciding)
    return notes


def test_a_request_without_lines_is_described_by_its_whole_reason():
    """A reason of 2,048 characters is taken, a line's description of 512: the note's one line
    was built as a requested line and raised out of every desk run, for every customer."""
    notes, ledger = _two_customers(), []
    long_reason = request(
        credit_note_id="cn-big", customer_id="c-big", invoice_id="inv-big", amount="5", reason="r" * 2048
    )
    notes.pending[0] = ("e-big", ASKED, long_reason)
    sent: list[tuple[str, str]] = []
    desk = CreditNoteDesk(notes, ledger.extend, worker_publish(sent, {"bytes": BROKER_LIMIT, "at_broker": True}))
    published = asyncio.run(desk.run_once(NOW))
    big = next(d for d in published if d["credit_note_id"] == BIG)
    assert big["lines"] == [{"description": "r" * 2048, "amount": "5.00"}]


def test_a_request_that_cannot_be_decided_costs_that_customer_not_every_customers_desk_run(monkeypatch):
    """It raised out of every desk run, for every customer: nothing was decided or published
    again, for anyone. The customer's later requests wait behind it, decided in the order
    received."""
    notes, ledger = _undecidable_first(monkeypatch), []
    sent: list[tuple[str, str]] = []
    desk = CreditNoteDesk(notes, ledger.extend, worker_publish(sent, {"bytes": BROKER_LIMIT, "at_broker": True}))

    first = asyncio.run(desk.run_once(NOW))
    again = asyncio.run(desk.run_once(LATER))

    assert [d["credit_note_id"] for d in first] == [SMALL]
    assert again == []
    assert _versions(notes) == {SMALL: 2}
    assert sent == [("invoices", "inv-1")]


def test_a_request_that_cannot_be_decided_is_logged_with_its_customer_and_credit_note_at_every_run(monkeypatch):
    notes, ledger = _undecidable_first(monkeypatch), []
    sent: list[tuple[str, str]] = []
    desk = CreditNoteDesk(notes, ledger.extend, worker_publish(sent, {"bytes": BROKER_LIMIT, "at_broker": True}))
    for now in (NOW, LATER):
        with capture_logs() as logs:
            asyncio.run(desk.run_once(now))
        (told,) = [entry for entry in logs if entry["log_level"] == "error"]
        assert "not decided" in told["event"]
        assert (told["customer_id"], told["credit_note_id"], told["invoice_id"]) == ("c-big", BIG, "inv-big")
