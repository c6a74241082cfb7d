"""Dunning's amount due once chargebacks and credit notes mix: it is the credit note
decision's own reckoning (``rating/amount_due.py``), fed from the rows dunning stores."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.dunning.engine import PAID, Case, InvoiceFacts, advance, state_of
from bastionary.dunning.events import credit_note_rows, parse_credit_note_issued
from bastionary.rating.credit_notes import Standing, decide

from .test_credit_notes import (
    ASKED,
    NOTE_SEQUENCES,
    NOW,
    issued,
    issued_event,
    note_fields,
    request,
    split,
    standing_after,
)
from .test_dunning_engine import POLICY

D = Decimal


def facts(total: str) -> InvoiceFacts:
    return InvoiceFacts("inv-1", "c1", "pro", "USD", D(total), NOW, NOW, NOW, NOW)


def take_note(case: Case, document: dict[str, Any]) -> None:
    """As the worker stores the issued event and the store loads it back."""
    data = parse_credit_note_issued(issued_event(document))
    assert data is not None
    for row in credit_note_rows(document["credit_note_id"], data, NOW):
        case.count(row.kind, row.amount)


def test_a_chargeback_after_a_note_gave_money_back_is_chased_in_full():
    """The review's example: paid 100.00, a note gives 30.00 back, then a 50.00 chargeback.
    The invoice less its note asks 70.00; of the 100.00 paid, 30.00 went back and 50.00 was
    charged back: 20.00 is kept, so 50.00 is due (dunning chased 20.00)."""
    for refund_to in ("balance", "payment"):
        note = issued(
            request(amount="30", refund_to=refund_to), Standing("inv-1", "c1", "USD", D(100), D(100), D(0), D(0))
        )
        assert split(note)[1] == "0.00"  # all of it given back
        case = Case(facts("100"))
        case.count("succeeded", D(100))
        take_note(case, note)
        if refund_to == "payment":
            case.count("refunded", D(30))  # the payment system reports the note's refund
        case.count("refunded", D(50))  # and a chargeback
        assert case.amount_due == D(50), refund_to


def test_a_chargeback_before_the_note_leaves_the_note_to_lower_what_is_due():
    case = Case(facts("100"))
    case.count("succeeded", D(100))
    case.count("refunded", D(50))  # chargeback first: 50.00 due
    assert case.amount_due == D(50)
    at = Standing("inv-1", "c1", "USD", D(100), D(50), D(0), D(0), refunds_reported=D(50))
    note = issued(request(amount="30"), at)
    assert split(note) == ("30.00", "30.00", "0.00", "0.00")
    take_note(case, note)
    assert case.amount_due == D(20)


def test_a_settled_case_reopens_when_a_chargeback_follows_a_give_back():
    """As with a refund of a paid invoice: a new state row, and notices once the due reaches
    the policy's min_amount_due. Before, paid plus credited (125.00) still read as settled."""
    case = Case(facts("100"))
    case.count("succeeded", D(100))
    note = issued(request(amount="30"), Standing("inv-1", "c1", "USD", D(100), D(100), D(0), D(0)))
    take_note(case, note)
    assert state_of(case, NOW + timedelta(days=2)) == PAID
    case.state, case.state_changes = PAID, 1
    case.count("refunded", D(5))
    assert case.amount_due == D(5)
    records = advance(case, POLICY, NOW + timedelta(days=2))
    assert (records[0].kind, records[0].detail) == ("state", "overdue")
    assert any(r.kind == "notice" and r.data and r.data["amount_due"] == "5.00" for r in records)


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 100_00),
    payments=st.lists(st.integers(1, 100_00), max_size=3),
    notes=NOTE_SEQUENCES,
    chargebacks=st.lists(st.tuples(st.integers(0, 8), st.integers(1, 100_00)), max_size=3),
)
def test_dunning_reckons_what_is_due_as_the_credit_note_decision_does(total, payments, notes, chargebacks):
    """Over any sequence of payments (partial or over-paying), notes (their refunds reported
    or not) and chargebacks anywhere: after every step, dunning's due, from the rows it
    stores, is the due the next note's decision reckons."""
    steps: list[tuple[str, Any]] = [("payment", D(c) / 100) for c in payments]
    steps += [("note", n) for n in enumerate(notes)]
    for position, cents in chargebacks:
        steps.insert(min(position, len(steps)), ("chargeback", D(cents) / 100))
    case = Case(facts(str(D(total) / 100)))
    at = Standing("inv-1", "c1", "USD", D(total) / 100, D(0), D(0), D(0))
    for kind, value in steps:
        if kind == "payment":
            case.count("succeeded", value)
            at = replace(at, paid=at.paid + value)
        elif kind == "chargeback":
            refund = min(value, at.paid)
            if refund > 0:
                case.count("refunded", refund)
                at = replace(at, paid=at.paid - refund, refunds_reported=at.refunds_reported + refund)
        else:
            n, (cents, refund_to, reported) = value
            decision = decide(f"evt-{n}", ASKED, request(**note_fields(n, cents, refund_to)), at, NOW)
            if not decision.issued:
                continue
            take_note(case, decision.document)
            refunded = D(decision.document["refunded"])
            if reported and refunded > 0:
                case.count("refunded", refunded)
            at = standing_after(at, decision.document, reported)
        assert case.amount_due == at.amount_due()
        assert (state_of(case, NOW - timedelta(days=1)) == PAID) == (at.amount_due() == 0)
