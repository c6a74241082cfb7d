"""Credit notes (``rating/credit_notes.py`` and the desk): what a request credits, where the
money goes, and that no sequence of notes credits an invoice more than once in total."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.credits.ledger import FUNDING_OF_KIND
from bastionary.dunning.engine import PAID, Case, InvoiceFacts, state_of
from bastionary.dunning.events import credit_note_rows, parse_credit_note_issued
from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.credit_notes import (
    CREDIT_NOTE_ISSUED,
    CREDIT_NOTE_REQUESTED,
    CreditNoteRequest,
    Decision,
    Standing,
    credit_note_id,
    decide,
    parse_credit_note_request,
)
from bastionary.rating.events import InvalidBillingEvent
from bastionary.rating.rows import LedgerRow

D = Decimal
NOW = datetime(2026, 3, 5, 12, tzinfo=UTC)
ASKED = datetime(2026, 3, 5, 11, tzinfo=UTC)


def request(**fields: Any) -> CreditNoteRequest:
    return CreditNoteRequest.model_validate(
        {"credit_note_id": "cn-1", "invoice_id": "inv-1", "customer_id": "c1"} | fields
    )


def standing(total: str = "100.00", paid: str = "0", credited: str = "0", reduced: str = "0") -> Standing:
    return Standing("inv-1", "c1", "USD", D(total), D(paid), D(credited), D(reduced))


def issued(req: CreditNoteRequest, at: Standing | None) -> dict[str, Any]:
    decision = decide("evt-1", ASKED, req, at, NOW)
    assert decision.issued, decision.document
    return decision.document


def split(document: dict[str, Any]) -> tuple[str, str, str, str]:
    return (document["amount"], document["reduces_amount_due"], document["refunded"], document["credited_to_balance"])


# --- what a note credits, and where it goes ----------------------------------------------


def test_a_note_on_an_open_invoice_reduces_what_is_due():
    assert split(issued(request(amount="30"), standing())) == ("30.00", "30.00", "0.00", "0.00")


def test_a_note_on_a_paid_invoice_goes_to_the_balance_by_default_or_back_to_the_payment():
    assert split(issued(request(amount="30"), standing(paid="100"))) == ("30.00", "0.00", "0.00", "30.00")
    refund = request(amount="30", refund_to="payment")
    assert split(issued(refund, standing(paid="100"))) == ("30.00", "0.00", "30.00", "0.00")


def test_a_note_on_a_partly_paid_invoice_reduces_the_due_first_and_gives_back_the_rest():
    assert split(issued(request(amount="70"), standing(paid="50"))) == ("70.00", "50.00", "0.00", "20.00")


def test_no_amount_credits_all_that_is_still_creditable():
    document = issued(request(), standing(paid="40", credited="25", reduced="25"))
    assert split(document) == ("75.00", "35.00", "0.00", "40.00")
    assert document["lines"] == [{"description": "Credit", "amount": "75.00"}]


def test_lines_name_what_is_credited_and_sum_to_the_amount():
    lines = [{"description": "Outage 3 March", "amount": "12.5"}, {"description": "Goodwill", "amount": "2"}]
    document = issued(request(lines=lines, reason="outage"), standing())
    assert document["amount"] == "14.50"
    assert document["lines"] == [
        {"description": "Outage 3 March", "amount": "12.50"},
        {"description": "Goodwill", "amount": "2.00"},
    ]


def test_a_void_credits_the_whole_unpaid_invoice():
    document = issued(request(void=True), standing())
    assert split(document) == ("100.00", "100.00", "0.00", "0.00") and document["voids_invoice"] is True


@pytest.mark.parametrize(
    ("req", "at", "why"),
    [
        (request(amount="100.01"), standing(), "more than the 100.00 USD still creditable"),
        (request(amount="10"), standing(credited="95"), "still creditable"),
        (request(), standing(credited="100"), "nothing left to credit"),
        (request(amount="0.001"), standing(), "decimal place"),
        # The sum is exact, the lines are not: rounding them would issue 10.01 + 10.00 as 20.00.
        (
            request(lines=[{"description": "a", "amount": "10.005"}, {"description": "b", "amount": "9.995"}]),
            standing(),
            "line amount 10.005 has 3 decimal places; USD has 2",
        ),
        (
            request(lines=[{"description": "a", "amount": "0.5"}, {"description": "b", "amount": "0.5"}]),
            replace(standing(), currency="JPY"),
            "line amount 0.5 has 1 decimal place; JPY has 0",
        ),
        (request(void=True), standing(paid="1"), "only an unpaid invoice"),
        (request(void=True), standing(credited="1", reduced="1"), "only an unpaid invoice"),
        # Voided through billing.payments (bastionary.invoice.voided.v1): cancelled for good, only
        # the prepaid credit it drew (none here) may come back.
        (request(amount="1"), replace(standing(), voided=True), "more than the 0.00 USD still creditable"),
        (request(), replace(standing(paid="100"), voided=True), "nothing left to credit"),
        (request(void=True), replace(standing(), voided=True), "'inv-1' was voided already"),
        (request(amount="1"), None, "no invoice"),
        (request(amount="1", customer_id="c2"), standing(), "is not customer"),
    ],
)
def test_what_cannot_be_credited_is_rejected_with_the_reason(req, at, why):
    decision = decide("evt-1", ASKED, req, at, NOW)
    assert decision.status == "rejected" and why in decision.document["rejection"]
    assert decision.credited_to_balance == 0


def test_the_issued_id_is_deterministic_per_customer_and_requested_id():
    assert decide("evt-1", ASKED, request(amount="1"), standing(), NOW).credit_note_id == credit_note_id("c1", "cn-1")
    assert credit_note_id("c1", "cn-1") != credit_note_id("c2", "cn-1")


@pytest.mark.parametrize(
    "data",
    [
        {"amount": "1", "lines": [{"description": "x", "amount": "1"}]},
        {"void": True, "amount": "1"},
        {"lines": []},
        {"amount": "0"},
        {"amount": "-1"},
        {"refund_to": "cash"},
        {"unknown": 1},
    ],
)
def test_a_request_that_cannot_be_read_is_invalid_data(data):
    event = {
        "specversion": "1.0",
        "id": "e",
        "source": "s",
        "type": CREDIT_NOTE_REQUESTED,
        "time": "2026-03-05T10:00:00Z",
        "data": {"credit_note_id": "cn", "invoice_id": "inv", "customer_id": "c"} | data,
    }
    with pytest.raises(InvalidBillingEvent) as raised:
        parse_credit_note_request(json.dumps(event).encode())
    assert raised.value.code == "invalid_data"


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
    data=st.dictionaries(
        st.sampled_from(["credit_note_id", "invoice_id", "customer_id", "amount", "lines", "void", "refund_to"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6), st.lists(st.text(max_size=3))),
    ),
)
def test_any_input_gives_a_request_or_the_parser_s_error(value, data):
    event = {"specversion": "1.0", "id": "e", "source": "s", "type": CREDIT_NOTE_REQUESTED, "time": NOW.isoformat()}
    for candidate in (value, json.dumps(event | {"data": data}).encode()):
        try:
            parse_credit_note_request(candidate)
        except InvalidBillingEvent:
            pass


@settings(max_examples=300, deadline=None)
@given(mills=st.lists(st.integers(1, 20_000), min_size=1, max_size=5))
def test_lines_are_issued_exactly_as_requested_or_rejected_never_rounded(mills):
    # Line amounts in thousandths of a dollar: some are whole cents, some are not.
    lines = [{"description": f"line {n}", "amount": str(D(m) / 1000)} for n, m in enumerate(mills)]
    decision = decide("evt-1", ASKED, request(lines=lines), standing(total="100.00"), NOW)
    exact = all(m % 10 == 0 for m in mills)
    if not exact:
        assert decision.status == "rejected" and "line amount" in decision.document["rejection"]
        return
    if sum(mills) > 100_000:
        assert decision.status == "rejected" and "still creditable" in decision.document["rejection"]
        return
    assert decision.issued
    issued_lines = [D(line["amount"]) for line in decision.document["lines"]]
    assert issued_lines == [D(m) / 1000 for m in mills]
    assert sum(issued_lines) == D(decision.document["amount"])


# --- any sequence of notes against one invoice --------------------------------------------

# Per note: the amount in cents (None: all that is still creditable), refund_to, and a flag
# each test reads its own way.
NOTE_SEQUENCES = st.lists(
    st.tuples(st.none() | st.integers(1, 120_00), st.sampled_from(["balance", "payment"]), st.booleans()),
    max_size=6,
)


def note_fields(n: int, cents: int | None, refund_to: str) -> dict[str, Any]:
    """The request fields of a generated sequence's n-th note."""
    fields: dict[str, Any] = {"credit_note_id": f"cn-{n}", "refund_to": refund_to}
    if cents is not None:
        fields["amount"] = str(D(cents) / 100)
    return fields


def standing_after(at: Standing, document: dict[str, Any], reported: bool) -> Standing:
    """The invoice as the next note finds it after an issued note's ``document``; ``reported``:
    the payment system has reported the note's refund (taken off ``paid``)."""
    amount, reduced, refunded, _ = (D(v) for v in split(document))
    reported_now = refunded if reported else D(0)
    return replace(
        at,
        paid=at.paid - reported_now,
        credited=at.credited + amount,
        reduced=at.reduced + reduced,
        refunds_reported=at.refunds_reported + reported_now,
        notes_refunded=at.notes_refunded + refunded,
    )


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 100_00),
    paid=st.integers(0, 100_00),
    notes=NOTE_SEQUENCES,
)
def test_notes_never_credit_more_than_the_invoice_nor_give_back_more_than_was_paid(total, paid, notes):
    at = Standing("inv-1", "c1", "USD", D(total) / 100, D(min(paid, total)) / 100, D(0), D(0))
    given_back = D(0)
    for n, (cents, refund_to, void) in enumerate(notes):
        fields = note_fields(n, None if void else cents, refund_to) | ({"void": True} if void else {})
        decision = decide(f"evt-{n}", ASKED, request(**fields), at, NOW)
        if not decision.issued:
            continue
        amount, reduced, refunded, balance = (D(v) for v in split(decision.document))
        assert amount > 0 and reduced >= 0 and refunded >= 0 and balance >= 0
        assert amount == reduced + refunded + balance
        given_back += refunded + balance
        at = Standing("inv-1", "c1", "USD", at.total, at.paid, at.credited + amount, at.reduced + reduced)
    assert at.credited <= at.total
    assert given_back <= at.paid  # never more back than was paid
    assert at.reduced <= at.total - at.paid  # never below zero due


# --- an invoice paid with prepaid credit ---------------------------------------------------
# Its total is net of the credit it drew; what credit paid can be credited too, and goes back
# to the credit balance (README, "Credit notes"). Until 2026-12-05 an invoice paid wholly with
# credit (total 0) could take no credit note at all.


def paid_with_credit(total: str, paid: str, credits: str) -> Standing:
    return Standing("inv-1", "c1", "USD", D(total), D(paid), D(0), D(0), credits_applied=D(credits))


def test_an_invoice_paid_wholly_with_credit_gives_its_credit_back_to_the_balance():
    note = issued(request(), paid_with_credit("0.00", "0", "100.00"))
    assert split(note) == ("100.00", "0.00", "0.00", "100.00")


def test_a_refund_to_payment_refunds_the_money_paid_and_gives_the_credit_back_as_credit():
    note = issued(request(refund_to="payment"), paid_with_credit("60.00", "60.00", "40.00"))
    assert split(note) == ("100.00", "0.00", "60.00", "40.00")


def test_a_note_on_an_unpaid_invoice_partly_paid_with_credit_reduces_what_is_due_first():
    note = issued(request(amount="70.00", refund_to="payment"), paid_with_credit("60.00", "0", "40.00"))
    assert split(note) == ("70.00", "60.00", "0.00", "10.00")


def test_no_more_than_the_subtotal_with_tax_can_be_credited():
    decision = decide("evt-1", ASKED, request(amount="100.01"), paid_with_credit("60.00", "60.00", "40.00"), NOW)
    assert not decision.issued
    assert decision.document["rejection"] == "amount 100.01 is more than the 100.00 USD still creditable"


def test_a_void_gives_the_credit_the_invoice_drew_back_to_the_balance():
    note = issued(request(void=True), paid_with_credit("60.00", "0", "40.00"))
    assert split(note) == ("100.00", "60.00", "0.00", "40.00") and note["voids_invoice"] is True


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(0, 100_00),
    paid=st.integers(0, 100_00),
    credits=st.integers(0, 100_00),
    notes=NOTE_SEQUENCES,
)
def test_notes_on_an_invoice_paid_with_credit_never_give_back_more_than_was_paid_and_drawn(total, paid, credits, notes):
    paid = min(paid, total)
    at = paid_with_credit(str(D(total) / 100), str(D(paid) / 100), str(D(credits) / 100))
    refunded_in_all = given_back = D(0)
    for n, (cents, refund_to, void) in enumerate(notes):
        fields = note_fields(n, None if void else cents, refund_to) | ({"void": True} if void else {})
        decision = decide(f"evt-{n}", ASKED, request(**fields), at, NOW)
        if not decision.issued:
            continue
        amount, reduced, refunded, balance = (D(v) for v in split(decision.document))
        assert amount > 0 and reduced >= 0 and refunded >= 0 and balance >= 0
        assert amount == reduced + refunded + balance
        refunded_in_all += refunded
        given_back += refunded + balance
        at = replace(
            at, credited=at.credited + amount, reduced=at.reduced + reduced, notes_refunded=at.notes_refunded + refunded
        )
    assert at.credited <= at.total + at.credits_applied
    assert refunded_in_all <= at.paid  # money goes back only as far as money came in
    assert given_back <= at.paid + at.credits_applied
    assert at.reduced <= at.total - at.paid  # never below zero due


# --- an overpaid invoice (paid more than its total) that drew credit ------------------------
# Money paid beyond the total is an overpayment: not creditable, and no note gives it back.
# Before 2026-12-07 a note took it for the invoice's money, so the credit the invoice drew
# came back as money (total 100.00, 50.00 of credit, paid 150.00: a full note refunded
# 150.00 and gave no credit back).


def test_an_overpaid_invoice_refunds_at_most_its_total_and_gives_the_credit_back_as_credit():
    overpaid = paid_with_credit("100.00", "150.00", "50.00")
    assert split(issued(request(refund_to="payment"), overpaid)) == ("150.00", "0.00", "100.00", "50.00")
    assert split(issued(request(), overpaid)) == ("150.00", "0.00", "0.00", "150.00")
    first = issued(request(amount="120.00", refund_to="payment"), overpaid)
    assert split(first) == ("120.00", "0.00", "100.00", "20.00")
    after = replace(overpaid, credited=D("120.00"), notes_refunded=D("100.00"))
    rest = issued(request(credit_note_id="cn-2", refund_to="payment"), after)
    assert split(rest) == ("30.00", "0.00", "0.00", "30.00")


@settings(max_examples=400, deadline=None)
@given(
    total=st.integers(0, 100_00),
    paid=st.integers(0, 250_00),
    credits=st.integers(0, 100_00),
    notes=st.lists(st.tuples(st.none() | st.integers(1, 220_00), st.booleans()), max_size=6),
    last_credits_the_rest=st.booleans(),
)
def test_a_note_refunds_no_more_money_than_paid_the_invoice_and_gives_credit_back_as_credit(
    total, paid, credits, notes, last_credits_the_rest
):
    """Overpaid or not, every note ``refund_to: payment`` (so all it puts on the balance is
    credit), the payment system reporting some of their refunds: money refunded in all is at
    most the money that paid the invoice's total, and credit never goes back as money. Once
    the whole invoice is credited, that money came back exactly, and the credit exactly as
    drawn. The oracle is the invoice's own figures, not the decision's reckoning."""
    money_toward_total = D(min(paid, total)) / 100
    drawn = D(credits) / 100
    at = paid_with_credit(str(D(total) / 100), str(D(paid) / 100), str(drawn))
    steps = [*notes, (None, False)] if last_credits_the_rest else notes
    refunded_in_all = credit_back = reduced_in_all = D(0)
    for n, (cents, reported) in enumerate(steps):
        decision = decide(f"evt-{n}", ASKED, request(**note_fields(n, cents, "payment")), at, NOW)
        if not decision.issued:
            continue
        amount, reduced, refunded, balance = (D(v) for v in split(decision.document))
        assert amount == reduced + refunded + balance and min(reduced, refunded, balance) >= 0
        refunded_in_all += refunded
        credit_back += balance
        reduced_in_all += reduced
        assert refunded_in_all <= money_toward_total  # never the overpayment, never the credit
        assert credit_back <= drawn
        at = standing_after(at, decision.document, reported)
    if at.credited == D(total) / 100 + drawn:  # the whole invoice credited
        assert credit_back == drawn
        assert refunded_in_all == money_toward_total
        assert reduced_in_all == max(D(total - paid) / 100, D(0))


# --- dunning sees the open balance shrink ------------------------------------------------


def issued_event(document: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"specversion": "1.0", "id": document["credit_note_id"], "source": "bastionary/rater",
         "type": CREDIT_NOTE_ISSUED, "time": document["issued_at"], "data": document}
    )  # fmt: skip


def case_after(total: str, paid: str, *documents: dict[str, Any]) -> Case:
    facts = InvoiceFacts("inv-1", "c1", "pro", "USD", D(total), NOW, NOW, NOW, NOW)
    case = Case(facts, paid=D(paid))
    for document in documents:
        data = parse_credit_note_issued(issued_event(document))
        assert data is not None
        for row in credit_note_rows(document["credit_note_id"], data, NOW):
            if row.kind == "credited":
                case.credited += row.amount
            elif row.kind == "voided":
                case.voided = True
    return case


def test_dunning_sees_what_is_due_shrink_and_a_full_credit_settle_the_invoice():
    first = issued(request(amount="30"), standing())
    assert case_after("100", "0", first).amount_due == D(70)
    rest = issued(request(credit_note_id="cn-2"), standing(credited="30", reduced="30"))
    assert state_of(case_after("100", "0", first, rest), NOW) == PAID
    void = issued(request(void=True), standing())
    assert state_of(case_after("100", "0", void), NOW) == "void"


def test_a_refund_the_payment_system_also_reports_nets_out():
    refund = issued(request(amount="30", refund_to="payment"), standing(paid="100"))
    assert case_after("100", "70", refund).amount_due == 0  # paid 100, refunded 30, credited 30


def test_other_types_on_the_invoices_topic_are_not_credit_notes():
    assert parse_credit_note_issued(orjson.dumps({"specversion": "1.0", "id": "x", "source": "s",
                                                  "type": "bastionary.invoice.finalized.v1",
                                                  "time": NOW.isoformat(), "data": {}})) is None  # fmt: skip


# --- the desk ------------------------------------------------------------------------------


@dataclass
class FakeNotes:
    standings: dict[str, Standing]
    pending: list[tuple[str, datetime, CreditNoteRequest]] = field(default_factory=list)
    decided: dict[str, tuple[dict[str, Any], Decimal, int]] = field(default_factory=dict)  # id -> doc, balance, version
    fail_mark: bool = False

    def requests(self) -> list[tuple[str, datetime, CreditNoteRequest]]:
        return [p for p in self.pending if credit_note_id(p[2].customer_id, p[2].credit_note_id) not in self.decided]

    def unpublished(self) -> list[tuple[dict[str, Any], Decimal]]:
        return [(doc, balance) for doc, balance, version in self.decided.values() if version == 1]

    def standing(self, invoice_id: str) -> Standing | None:
        base = self.standings.get(invoice_id)
        if base is None:
            return None
        notes = [d for d, _, _ in self.decided.values() if d["status"] == "issued" and d["invoice_id"] == invoice_id]
        credited = sum((D(d["amount"]) for d in notes), D(0))
        reduced = sum((D(d["reduces_amount_due"]) for d in notes), D(0))
        at = Standing(base.invoice_id, base.customer_id, base.currency, base.total, base.paid, credited, reduced)
        return replace(at, tax_lines=base.tax_lines)  # the invoice's tax, for the notes' share of it

    def unpublished_invoices(self, invoices: Any) -> set[tuple[str, str]]:
        return set()  # every invoice here counts as published

    def store(self, decisions: list[tuple[str, CreditNoteRequest, Decision]]) -> None:
        for _, _, decision in decisions:
            self.decided[decision.credit_note_id] = (decision.document, decision.credited_to_balance, 1)

    def mark_published(self, documents: list[dict[str, Any]]) -> None:
        if self.fail_mark:
            raise RuntimeError("mark")
        for document in documents:
            doc, balance, _ = self.decided[document["credit_note_id"]]
            self.decided[document["credit_note_id"]] = (doc, balance, 2)


@dataclass
class Sent:
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, role: str, key: str, value: bytes) -> Any:
        self.events.append((role, key, orjson.loads(value)))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_the_desk_decides_in_order_publishes_once_and_puts_the_balance_in_the_ledger():
    notes = FakeNotes({"inv-1": standing(paid="100")})
    notes.pending = [
        ("e1", ASKED, request(amount="60")),
        ("e2", ASKED, request(credit_note_id="cn-2", amount="60")),  # only 40 left: rejected
        ("e3", ASKED, request(credit_note_id="cn-3", customer_id="c9")),  # not ours
    ]
    ledger: list[LedgerRow] = []
    sent = Sent()
    desk = CreditNoteDesk(notes, ledger.extend, sent, owns=lambda customer: customer == "c1")
    documents = asyncio.run(desk.run_once(NOW))
    assert [d["status"] for d in documents] == ["issued", "rejected"]
    assert [(role, key, e["type"]) for role, key, e in sent.events] == [
        ("invoices", "inv-1", CREDIT_NOTE_ISSUED),
        ("invoices", "inv-1", "bastionary.credit_note.rejected.v1"),
    ]
    (row,) = ledger
    assert (row.kind, row.grant_id, row.amount, FUNDING_OF_KIND[row.kind]) == (
        "credit_note",
        credit_note_id("c1", "cn-1"),
        D("60.00"),
        "carried",
    )
    assert asyncio.run(desk.run_once(NOW)) == []  # decided and published: nothing again


def test_a_crash_before_the_published_mark_republishes_the_same_decision():
    notes = FakeNotes({"inv-1": standing(paid="100")}, fail_mark=True)
    notes.pending = [("e1", ASKED, request(amount="60"))]
    ledger: list[LedgerRow] = []
    sent = Sent()
    desk = CreditNoteDesk(notes, ledger.extend, sent)
    with pytest.raises(RuntimeError):
        asyncio.run(desk.run_once(NOW))
    notes.fail_mark = False
    asyncio.run(desk.run_once(datetime(2026, 3, 6, tzinfo=UTC)))  # decided already: not again
    first, second = (e for _, _, e in sent.events)
    assert first == second
    assert {row.movement_id for row in ledger} == {ledger[0].movement_id}  # one movement, written twice


def test_a_note_after_a_refund_the_payment_system_reported_gives_back_all_that_was_paid():
    """Paid 100.00; the first note refunded 30.00 and the payment system reported it (paid is
    now 70.00). The second note credits the other 70.00: nothing is due, so all of it goes
    back. Before, 30.00 of it "reduced" a due that dunning already saw as 0: lost."""
    first = issued(request(amount="30", refund_to="payment"), standing(paid="100"))
    assert split(first) == ("30.00", "0.00", "30.00", "0.00")
    after_refund = replace(standing(paid="70", credited="30"), refunds_reported=D(30), notes_refunded=D(30))
    second = issued(request(credit_note_id="cn-2"), after_refund)
    assert split(second) == ("70.00", "0.00", "0.00", "70.00")


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 100_00),
    paid=st.integers(0, 100_00),
    notes=NOTE_SEQUENCES,
)
def test_what_goes_back_is_what_was_paid_beyond_what_is_still_owed(total, paid, notes):
    """Whatever the order of notes, and whether the payment system reports their refunds (which
    lowers ``paid``): the customer gets back exactly what they paid beyond what the invoice,
    less its notes, still asks, and no cent more or less."""
    paid_first = D(min(paid, total)) / 100
    at = Standing("inv-1", "c1", "USD", D(total) / 100, paid_first, D(0), D(0))
    given_back = D(0)
    for n, (cents, refund_to, reported) in enumerate(notes):
        fields = note_fields(n, cents, refund_to)
        decision = decide(f"evt-{n}", ASKED, request(**fields), at, NOW)
        if not decision.issued:
            continue
        _, _, refunded, balance = (D(v) for v in split(decision.document))
        given_back += refunded + balance
        at = standing_after(at, decision.document, reported)
    assert given_back == max(at.credited - (at.total - paid_first), D(0))


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 100_00),
    paid=st.integers(0, 100_00),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("note"), st.none() | st.integers(1, 120_00), st.sampled_from(["balance", "payment"])),
            st.tuples(st.just("chargeback"), st.integers(1, 100_00), st.just("")),
        ),
        max_size=8,
    ),
)
def test_a_note_never_gives_back_more_than_was_paid_and_not_yet_given_back(total, paid, steps):
    """With refunds no note asked for (chargebacks) anywhere in the sequence: each note gives
    back at most what was paid and not yet given back, by notes or by the payment system."""
    at = Standing("inv-1", "c1", "USD", D(total) / 100, D(min(paid, total)) / 100, D(0), D(0))
    for n, (kind, cents, refund_to) in enumerate(steps):
        if kind == "chargeback":
            refund = min(D(cents) / 100, at.paid)
            at = replace(at, paid=at.paid - refund, refunds_reported=at.refunds_reported + refund)
            continue
        fields = note_fields(n, cents, refund_to)
        before = max(at.still_paid(), D(0))
        decision = decide(f"evt-{n}", ASKED, request(**fields), at, NOW)
        if not decision.issued:
            continue
        amount, reduced, refunded, balance = (D(v) for v in split(decision.document))
        assert amount == reduced + refunded + balance and min(reduced, refunded, balance) >= 0
        assert refunded + balance <= before
        at = standing_after(at, decision.document, reported=False)


def test_a_chargeback_after_a_note_gave_money_back_is_not_given_back_again():
    """Paid 100.00; a note put 30.00 on the balance; the payment system then reported a
    50.00 refund no note asked for. Of the 100.00 paid, 20.00 is still ours: a note for the
    other 70.00 reduces what is due by 50.00 and gives back 20.00, not 50.00."""
    second = issued(request(credit_note_id="cn-2"), replace(standing(paid="50", credited="30"), refunds_reported=D(50)))
    assert split(second) == ("70.00", "50.00", "0.00", "20.00")


def test_a_voided_invoice_gives_back_only_the_credit_it_drew_to_the_balance():
    """Voided through billing.payments, its 50.00 of prepaid credit is still the customer's and
    the void does not give it back: a note may, to the balance whatever refund_to says, and no
    more (notes after it find less)."""
    voided = replace(standing(total="100.00", paid="100"), credits_applied=D("50"), voided=True)
    document = issued(request(refund_to="payment"), voided)
    assert split(document) == ("50.00", "0.00", "0.00", "50.00")
    after = replace(voided, credited=D("50"))
    assert (
        "0.00 USD still creditable" in decide("evt-2", ASKED, request(amount="0.01"), after, NOW).document["rejection"]
    )
