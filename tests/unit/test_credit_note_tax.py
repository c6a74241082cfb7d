"""The tax a credit note gives back (``tax_lines`` of an issued note): its share of each of the
invoice's tax lines, from running totals, so the notes of a fully credited invoice give back
exactly the invoice's tax and taxable whatever the split (README, Credit notes)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.money import MINOR_UNITS, minor_unit
from bastionary.rating.contracts import schema_for
from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.credit_notes import Standing, decide
from bastionary.rating.render import credit_note_view

from .test_billing_contracts import check
from .test_credit_notes import ASKED, NOW, FakeNotes, Sent, request

D = Decimal
VAT = {"key": "vat", "name": "VAT 19%", "rate": "0.19", "inclusive": False, "taxable": "100.00", "amount": "19.00"}


def invoice(
    total: str = "119.00", tax_lines: list[dict[str, Any]] | None = None, currency: str = "USD", **fields: Any
) -> Standing:
    lines = [VAT] if tax_lines is None else tax_lines
    at = Standing("inv-1", "c1", currency, D(total), D(0), D(0), D(0), tax_lines=tuple(lines))
    return replace(at, **fields)


def credit_in_turn(at: Standing, amounts: list[str | None]) -> list[dict[str, Any]]:
    """Issue one note per amount (None: the rest), each seeing the ones before, as the desk does."""
    documents = []
    for number, amount in enumerate(amounts):
        fields = {} if amount is None else {"amount": amount}
        decision = decide(f"evt-{number}", ASKED, request(credit_note_id=f"cn-{number}", **fields), at, NOW)
        assert decision.issued, decision.document
        documents.append(decision.document)
        at = replace(
            at,
            credited=at.credited + D(decision.document["amount"]),
            reduced=at.reduced + D(decision.document["reduces_amount_due"]),
        )
    return documents


def tax(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(line["taxable"], line["amount"]) for line in document["tax_lines"]]


# --- the README's example: 100.00 + 19% VAT = 119.00 -------------------------------------


def test_three_thirds_then_the_rest_give_back_exactly_the_invoice_s_tax():
    notes = credit_in_turn(invoice(), ["33.33", "33.33", "33.34", None])
    assert [n["amount"] for n in notes] == ["33.33", "33.33", "33.34", "19.00"]
    # 33.33 x 19 / 119 = 5.3217 -> 5.32; 66.66: 10.643 -> 10.64; 100.00: 15.966 -> 15.97; 119.00: 19.00
    assert [tax(n) for n in notes] == [
        [("28.01", "5.32")],
        [("28.01", "5.32")],
        [("28.01", "5.33")],
        [("15.97", "3.03")],
    ]
    assert notes[0]["tax_lines"][0] | {"taxable": "", "amount": ""} == VAT | {"taxable": "", "amount": ""}


def test_one_note_for_the_whole_invoice_gives_back_all_its_tax():
    (note,) = credit_in_turn(invoice(), [None])
    assert (note["amount"], tax(note)) == ("119.00", [("100.00", "19.00")])


def test_a_void_gives_back_all_the_tax():
    decision = decide("evt", ASKED, request(void=True), invoice(), NOW)
    assert decision.issued and tax(decision.document) == [("100.00", "19.00")]


def test_inclusive_tax_is_part_of_the_note_too():
    """Prices of 119.00 including 19% VAT: taxable 100.00, tax 19.00 inside the total."""
    included = VAT | {"inclusive": True}
    notes = credit_in_turn(invoice(tax_lines=[included]), ["33.33", "33.33", "33.34", None])
    assert [tax(n) for n in notes] == [
        [("28.01", "5.32")],
        [("28.01", "5.32")],
        [("28.01", "5.33")],
        [("15.97", "3.03")],
    ]
    assert all(n["tax_lines"][0]["inclusive"] for n in notes)


def test_credit_drawn_is_creditable_so_the_note_is_measured_against_the_subtotal_with_tax():
    """Total 19.00 after 100.00 of prepaid credit: a note of 59.50 is half of 119.00."""
    (note,) = credit_in_turn(invoice(total="19.00", credits_applied=D("100.00")), ["59.50"])
    assert tax(note) == [("50.00", "9.50")]


def test_an_invoice_without_tax_gives_notes_without_tax():
    (note,) = credit_in_turn(invoice(tax_lines=[]), ["50.00"])
    assert note["tax_lines"] == []


def test_notes_issued_before_tax_lines_count_in_the_running_total():
    """A note of 50.00 issued before notes carried tax took 7.98 of the tax (50 x 19 / 119,
    unrecorded): the rest of the invoice gives back the other 11.02 (and 57.98 of the taxable),
    not 19.00 again."""
    (note,) = credit_in_turn(invoice(credited=D("50.00"), reduced=D("50.00")), [None])
    assert (note["amount"], tax(note)) == ("69.00", [("57.98", "11.02")])


def test_a_rejected_note_gives_back_no_tax():
    decision = decide("evt", ASKED, request(amount="200.00"), invoice(), NOW)
    assert not decision.issued and "tax_lines" not in decision.document


def test_the_desk_gives_each_note_its_share_after_the_ones_before():
    notes = FakeNotes({"inv-1": invoice()})
    notes.pending = [(f"e{i}", ASKED, request(credit_note_id=f"cn-{i}", amount=a)) for i, a in enumerate(["33.33"] * 3)]
    sent = Sent()
    asyncio.run(CreditNoteDesk(notes, lambda rows: None, sent).run_once(NOW))
    assert [e["data"]["tax_lines"][0]["amount"] for _, _, e in sent.events] == ["5.32", "5.32", "5.32"]
    for _, _, event in sent.events:
        check(event)  # the published decision fits credit-note-decision.schema.json


def test_the_decision_schema_describes_tax_lines_as_the_invoice_s():
    data = schema_for("credit-note-decision")["properties"]["data"]["properties"]
    invoice_tax = schema_for("invoice")["properties"]["data"]["properties"]["tax_lines"]
    assert data["tax_lines"]["items"] == invoice_tax["items"]


def test_the_credit_note_page_shows_the_tax_it_gives_back():
    (note,) = credit_in_turn(invoice(), ["33.33"])
    totals = {row["label"]: row["amount"] for row in credit_note_view(note)["totals"]}
    assert totals["of which VAT 19% (on 28.01 USD)"] == "5.32 USD"


# --- any invoice, any split --------------------------------------------------------------


@st.composite
def invoices_and_splits(draw: st.DrawFn) -> tuple[Standing, list[str]]:
    currency = draw(st.sampled_from(["USD", "JPY", "BHD"]))
    unit = minor_unit(currency)
    gross = draw(st.integers(1, 10**12))  # in minor units
    credits = draw(st.integers(0, gross))
    lines = [
        {
            "key": f"t{i}",
            "name": f"Tax {i}",
            "rate": "0.1",
            "inclusive": draw(st.booleans()),
            "taxable": str(draw(st.integers(-(10**13), 10**13)) * unit),
            "amount": str(draw(st.integers(-(10**12), 10**12)) * unit),
        }
        for i in range(draw(st.integers(0, 3)))
    ]
    cuts = draw(st.lists(st.integers(1, gross - 1), unique=True, max_size=min(gross - 1, 12))) if gross > 1 else []
    bounds = [0, *sorted(cuts), gross]
    parts = [str((b - a) * unit) for a, b in pairwise(bounds)]
    paid = draw(st.integers(0, gross - credits)) * unit
    at = Standing(
        "inv-1",
        "c1",
        currency,
        (gross - credits) * unit,
        paid,
        D(0),
        D(0),
        credits_applied=credits * unit,
        tax_lines=tuple(lines),
    )
    return at, parts


@given(invoices_and_splits())
def test_any_split_gives_back_exactly_the_invoice_s_tax_each_note_within_a_minor_unit(case):
    at, parts = case
    notes = credit_in_turn(at, list(parts))
    unit = minor_unit(at.currency)
    gross = at.total + at.credits_applied
    for index, line in enumerate(at.tax_lines):
        for name in ("taxable", "amount"):
            given_back = [D(note["tax_lines"][index][name]) for note in notes]
            assert sum(given_back, D(0)) == D(line[name])
            for note, share in zip(notes, given_back, strict=True):
                exact = D(line[name]) * D(note["amount"]) / gross
                assert abs(share - exact) <= unit, (note["amount"], share, exact)
                assert share == share.quantize(unit)
                assert len(note["tax_lines"][index][name].partition(".")[2]) == MINOR_UNITS[at.currency]
            assert [n["tax_lines"][index]["key"] for n in notes] == [line["key"]] * len(notes)


@pytest.mark.parametrize(
    "raw",
    [
        "{",
        "{}",
        "[1]",
        '[{"key": "vat"}]',
        '[{"key": "v", "name": "v", "rate": "0.19", "inclusive": false, "taxable": "x", "amount": "1"}]',
    ],
)
def test_a_damaged_invoice_document_gives_notes_no_tax_part_rather_than_stopping_the_desk(raw):
    from bastionary.storage.credit_notes import _tax_lines

    assert _tax_lines(raw) == ()


def test_a_stored_document_s_tax_lines_are_read_as_written():
    from bastionary.storage.credit_notes import _tax_lines

    line = {"key": "v", "name": "VAT", "rate": "0.19", "inclusive": False, "taxable": "100.00", "amount": "19.00"}
    assert _tax_lines(orjson.dumps([line]).decode()) == (line,)
    assert _tax_lines("") == ()
