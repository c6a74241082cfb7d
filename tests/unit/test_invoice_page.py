"""Tax (``rating/tax.py``) and the invoice page (``rating/render.py``): what a customer reads,
in HTML and PDF from one template."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pypdfium2 as pdfium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.credits.ledger import Grant
from bastionary.rating.invoice import Line, Period, Segment, Subscription, finalize
from bastionary.rating.plans import Plan
from bastionary.rating.render import (
    credit_note_view,
    money,
    period_label,
    quantity,
    render_html,
    render_invoice_pdf,
    render_pdf_view,
)
from bastionary.rating.tax import Invoicing, TaxProfile, TaxRate, added_tax, rates_for, tax_lines

D = Decimal
JAN, FEB = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
VAT = TaxRate(key="de_vat", name="VAT 19%", rate=D("0.19"), countries=["DE"])
GST = TaxRate(key="gst", name="GST 10%", rate=D("0.1"), inclusive=True)


# --- tax ---------------------------------------------------------------------------------


def test_a_rate_applies_by_country_and_never_to_an_exempt_customer():
    assert rates_for([VAT, GST], TaxProfile("DE")) == [VAT, GST]
    assert rates_for([VAT, GST], TaxProfile("FR")) == [GST]  # no countries: everyone
    assert rates_for([VAT, GST], TaxProfile("DE", exempt=True)) == []


def test_exclusive_tax_is_added_and_inclusive_tax_is_shown_only():
    (vat,) = tax_lines(D("100.00"), "EUR", [VAT])
    assert (vat["taxable"], vat["amount"], vat["inclusive"]) == ("100.00", "19.00", False)
    (gst,) = tax_lines(D("110.00"), "AUD", [GST])
    assert (gst["taxable"], gst["amount"]) == ("100.00", "10.00")
    assert added_tax([vat]) == D("19.00") and added_tax([gst]) == 0


def test_tax_rounds_once_per_rate_half_up_and_a_zero_subtotal_takes_none():
    assert tax_lines(D("0.05"), "EUR", [VAT])[0]["amount"] == "0.01"  # 0.0095
    assert tax_lines(D("0.00"), "EUR", [VAT]) == []
    assert tax_lines(D("1000"), "JPY", [VAT])[0]["amount"] == "190"


def test_a_negative_subtotal_reverses_its_tax():
    (vat,) = tax_lines(D("-5.00"), "EUR", [VAT])
    assert (vat["taxable"], vat["amount"]) == ("-5.00", "-0.95")
    data = invoice(["10.00", "-15.00"], [VAT], credit="50.00")
    assert (data["subtotal"], data["tax"], data["credits_applied"], data["total"], data["carried_forward"]) == (
        "-5.00",
        "-0.95",
        "0.00",
        "0.00",
        "5.95",  # given back with the tax it had cost
    )


@settings(max_examples=300, deadline=None)
@given(
    subtotal=st.decimals("0.01", 100000, places=2),
    currency=st.sampled_from(["EUR", "JPY", "BHD"]),
    rates=st.lists(st.sampled_from([VAT, GST]), min_size=1, unique_by=lambda rate: rate.key),
)
def test_taking_back_an_amount_takes_back_exactly_its_tax(subtotal, currency, rates):
    """Half up is away from zero, so a reversal never differs from the tax it reverses by a
    rounding: billing an amount and taking it back nets no tax."""
    charged = tax_lines(subtotal, currency, rates)
    taken_back = tax_lines(-subtotal, currency, rates)
    assert [D(line["amount"]) for line in taken_back] == [-D(line["amount"]) for line in charged]
    assert [D(line["taxable"]) for line in taken_back] == [-D(line["taxable"]) for line in charged]


def test_a_rate_has_at_most_six_decimals_and_lies_between_0_and_1():
    for bad in ("0", "1", "0.1234567", "-0.1"):
        with pytest.raises(ValueError):
            TaxRate(key="x", name="x", rate=D(bad))
    with pytest.raises(ValueError):
        Invoicing(taxes=[VAT, VAT])


def invoice(amounts: list[str], taxes: list[TaxRate], credit: str | None = None) -> dict[str, Any]:
    plan = Plan(key="p", currency="EUR")
    sub = Subscription("sub-1", "c1", JAN, (Segment(plan, JAN),))
    lines = [Line(f"k{n}", None, f"line {n}", D(1), D(a)) for n, a in enumerate(amounts)]
    grants = [Grant("g", "c1", D(credit), "EUR", 0, JAN)] if credit else []
    data, _ = finalize(sub, plan, Period(0, JAN, FEB, FEB), lines, FEB, grants, {}, taxes=taxes)
    return data.document()


def test_credits_pay_the_invoice_tax_included():
    data = invoice(["100.00"], [VAT], credit="50.00")
    assert (data["subtotal"], data["tax"], data["credits_applied"], data["total"]) == (
        "100.00",
        "19.00",
        "50.00",
        "69.00",
    )
    whole = invoice(["100.00"], [VAT], credit="500.00")
    assert (whole["credits_applied"], whole["total"]) == ("119.00", "0.00")


@settings(max_examples=200, deadline=None)
@given(
    amounts=st.lists(st.decimals(-500, 5000, places=2).map(str), max_size=5),
    credit=st.none() | st.decimals("0.01", 500, places=2).map(str),
    rates=st.lists(st.sampled_from([VAT, GST]), unique_by=lambda rate: rate.key),
)
def test_every_invoice_adds_up_with_tax(amounts, credit, rates):
    data = invoice(amounts, rates, credit)
    subtotal, credits, total, carried = (
        D(data[k]) for k in ("subtotal", "credits_applied", "total", "carried_forward")
    )
    added = added_tax(data["tax_lines"])
    assert total >= 0 and credits >= 0
    assert subtotal + added == credits + total - carried


# --- the page ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "label"),
    [
        ("2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00", "1\u201330 Nov 2026"),
        ("2026-11-15T00:00:00+00:00", "2026-12-15T00:00:00+00:00", "15 Nov \u2013 14 Dec 2026"),
        ("2026-12-15T00:00:00+00:00", "2027-01-15T00:00:00+00:00", "15 Dec 2026 \u2013 14 Jan 2027"),
        ("2026-11-30T00:00:00+00:00", "2026-12-01T00:00:00+00:00", "30 Nov 2026"),
        ("2026-11-30T10:01:00+00:00", "2026-11-30T10:02:00+00:00", "30 Nov 2026 10:01\u201310:02 UTC"),
        ("2026-11-30T23:30:00+00:00", "2026-12-01T00:30:00+00:00", "30 Nov 2026 23:30\u20131 Dec 2026 00:30 UTC"),
    ],
)
def test_periods_read_as_dates_with_the_exclusive_end_shown_as_the_last_day(start, end, label):
    assert period_label(start, end) == label


def test_money_and_quantities_as_a_customer_reads_them():
    assert money("-0.00", "USD") == "0.00 USD"
    assert money("1234567.5", "USD") == "1,234,567.50 USD"
    assert money("1234", "JPY") == "1,234 JPY"
    assert quantity("0.9540046296296296296296296296") == "0.954"
    assert quantity("1234567") == "1,234,567"
    assert quantity("2.50000") == "2.5"


def document(**changes: Any) -> dict[str, Any]:
    data = invoice(["30.00", "0.00", "12.345"], [VAT])
    data["lines"][1]["quantity"] = "0"
    data["issuer"] = {"name": "Seller GmbH", "address": ["Str. 1", "10117 Berlin"], "tax_id": "DE1",
                      "email": "", "payment_instructions": "IBAN DE00 0000\nReference: the invoice number"}  # fmt: skip
    data["bill_to"] = {"name": "Björk & Søn AB", "email": "ap@b.example", "tax_id": "SE1",
                       "address": {"line1": "Storgatan 1", "city": "Stockholm", "postal_code": "111 22", "country": "SE"}}  # fmt: skip
    return data | changes


def test_the_page_names_both_parties_the_tax_and_the_payment_and_hides_zero_lines():
    page = render_html(document())
    for text in ("Seller GmbH", "Björk &amp; Søn AB", "Tax id SE1", "VAT 19% (on 42.35 EUR)", "8.05 EUR",
                 "50.40 EUR", "IBAN DE00 0000", "1\u201331 Jan 2026", "line 0", "line 2"):  # fmt: skip
        assert text in page, text
    assert "line 1" not in page and "-0.00" not in page and "Credits applied" not in page
    assert "line 1" in render_html(document(), hide_zero_lines=False)


def test_a_hostile_name_is_escaped():
    page = render_html(document(bill_to={"name": "<script>alert(1)</script>"}))
    assert "<script>" not in page and "&lt;script&gt;" in page


def pdf_text(content: bytes) -> str:
    assert content.startswith(b"%PDF-")
    pdf = pdfium.PdfDocument(io.BytesIO(content))
    page = pdf[0]
    assert page.render(scale=0.5).to_pil().size[0] > 100  # it draws
    return str(page.get_textpage().get_text_range())


def test_the_pdf_is_the_same_page():
    text = pdf_text(render_invoice_pdf(document()))
    for expected in ("Invoice", "Björk & Søn AB", "VAT 19% (on 42.35 EUR)", "50.40 EUR", "Total due"):
        assert expected in text, expected
    assert "line 1" not in text


def test_a_credit_note_renders_on_its_invoice_s_page():
    note = {"credit_note_id": "cn", "invoice_id": "inv", "customer_id": "c1", "currency": "EUR", "amount": "30.00",
            "lines": [{"description": "Outage", "amount": "30.00"}], "reduces_amount_due": "10.00",
            "refunded": "0.00", "credited_to_balance": "20.00", "issued_at": "2026-02-03T00:00:00+00:00",
            "voids_invoice": False}  # fmt: skip
    view = credit_note_view(note, document())
    text = pdf_text(render_pdf_view(view))
    for expected in ("Credit note", "Outage", "Credit total", "Credited to your balance", "20.00 EUR", "Seller GmbH"):
        assert expected in text, expected
    assert "Refunded" not in text


def test_a_fee_in_advance_names_the_period_it_pays_for_and_the_kind_titles_the_page():
    data = document(kind="advance")
    data["lines"][0] |= {"billing_timing": "advance", "service_period_start": FEB.isoformat(),
                         "service_period_end": datetime(2026, 3, 1, tzinfo=UTC).isoformat()}  # fmt: skip
    page = render_html(data)
    assert "Invoice (fees in advance)" in page and "In advance, for 1\u201328 Feb 2026" in page
    assert "Progressive invoice (usage so far)" in render_html(document(kind="progressive"))


def test_a_line_s_spans_are_shown_where_they_tell_more_than_its_period():
    def span(first: int, end: int, amount: str) -> dict[str, str]:
        ends = datetime(2026, 2, end, tzinfo=UTC) if end <= 28 else datetime(2026, 3, 1, tzinfo=UTC)
        share = str(round(Decimal(end - first) / 28, 9))
        return {"start": datetime(2026, 2, first, tzinfo=UTC).isoformat(), "end": ends.isoformat(),
                "quantity": share if not amount.startswith("-") else "-" + share, "amount": amount}  # fmt: skip

    data = document()
    data["lines"][0]["service_spans"] = [span(1, 10, "9.64"), span(20, 29, "9.64")]  # a -> b -> a: two spans
    data["lines"][2]["service_spans"] = [span(1, 29, "12.35")]  # one: its period says it all
    page = render_html(data)
    assert "For 1\u20139 Feb 2026: 9.64 EUR" in page and "For 20\u201328 Feb 2026: 9.64 EUR" in page
    assert "12.35 EUR" not in page.split("line 2", 1)[1].split("</td>", 1)[0]
    # An adjustment: what it replaces at the same amount nets out, the rest reads given back or billed.
    data["lines"][0] |= {"adjusts_period_start": FEB.isoformat(),
                         "service_spans": [span(1, 10, "-9.64"), span(20, 29, "-9.64"), span(1, 5, "4.29"),
                                           span(20, 29, "9.64")]}  # fmt: skip
    page = render_html(data)
    assert "Given back for 1\u20139 Feb 2026: -9.64 EUR" in page and "For 1\u20134 Feb 2026: 4.29 EUR" in page
    assert "20\u201328 Feb 2026" not in page
