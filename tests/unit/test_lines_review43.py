"""How an invoice's lines present their amounts (review of 2026-12-07, forty-third session):
the tiers shown add up to the line, no money field is a negative zero, and the page shows
every quantity the JSON can hold."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastionary.money import format_money, plain_decimal, round_money
from bastionary.rating.invoice import Line, Period, Segment, Subscription, finalize, flat_line, stored_quantity
from bastionary.rating.plans import FlatPrice, Plan, Tier
from bastionary.rating.pricing import graduated, volume
from bastionary.rating.render import invoice_view, quantity, render_html
from bastionary.rating.tax import TaxRate

D = Decimal
NOV, DEC = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
VAT = TaxRate(key="de_vat", name="VAT 19%", rate=D("0.19"))

# --- a line's tiers add up to the line ----------------------------------------------------


def test_two_tiers_of_half_a_cent_show_the_line_they_make():
    tiers = [Tier(up_to=D(1), unit_amount=D("0.015")), Tier(up_to=None, unit_amount=D("0.015"))]
    priced = graduated(tiers, D(2), "USD")
    assert format_money(priced.amount, "USD") == "0.03"
    assert [t["amount"] for t in priced.tiers] == ["0.02", "0.01"]  # were 0.02 and 0.02


AMOUNTS = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tier_tables(draw: st.DrawFn) -> list[Tier]:
    bounds = sorted(set(draw(st.lists(st.integers(1, 1000), max_size=5))))
    tiers = [Tier(up_to=D(b), unit_amount=draw(AMOUNTS), flat_amount=draw(AMOUNTS)) for b in bounds]
    return [*tiers, Tier(up_to=None, unit_amount=draw(AMOUNTS), flat_amount=draw(AMOUNTS))]


@settings(max_examples=300, deadline=None)
@example(
    tiers=[Tier(up_to=D(1), unit_amount=D("0.015")), Tier(up_to=None, unit_amount=D("0.015"))],
    used=D(2),
    currency="USD",
)
@given(
    tiers=tier_tables(),
    used=st.decimals(min_value=0, max_value=5000, places=3, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(["USD", "JPY", "BHD"]),
)
def test_the_tiers_shown_add_up_to_the_line(tiers, used, currency):
    for priced in (graduated(tiers, used, currency), volume(tiers, used, currency)):
        shown = [D(t["amount"]) for t in priced.tiers]
        assert sum(shown, D(0)) == round_money(priced.amount, currency)
        assert all(amount >= 0 and not amount.is_signed() for amount in shown)


# --- no negative zero in what a document writes ---------------------------------------------


def test_an_amount_that_rounds_to_zero_from_below_is_written_zero():
    assert format_money(D("-0.004"), "USD") == "0.00"
    assert str(round_money(D("-0.4"), "JPY")) == "0"
    assert format_money(D("-0.005"), "USD") == "-0.01"  # half away from zero, as before
    assert plain_decimal(stored_quantity(D("-0.0000000004"))) == "0"  # a quantity, kept to 9 decimals


def _invoice_of(amount: str):
    plan = Plan(key="pro", currency="EUR", prices=[FlatPrice(key="base", model="flat", amount=D(1))])
    sub = Subscription("s1", "c1", NOV, (Segment(plan, NOV),))
    line = Line("base", None, "Correction", D(-1), D(amount), line_key="pro:base")
    invoice, _ = finalize(sub, plan, Period(0, NOV, DEC, DEC), [line], DEC, [], {}, taxes=[VAT])
    return invoice.document()


def test_the_tax_of_a_two_cent_correction_is_not_a_negative_zero():
    document = _invoice_of("-0.02")  # -0.0038 of VAT
    assert document["subtotal"] == "-0.02"
    assert [(t["taxable"], t["amount"]) for t in document["tax_lines"]] == [("-0.02", "0.00")]
    assert document["tax"] == "0.00"


def test_a_line_that_rounds_to_zero_from_below_is_not_a_negative_zero():
    document = _invoice_of("-0.004")
    assert document["lines"][0]["amount"] == "0.00"
    assert document["subtotal"] == "0.00"


# --- the page shows what the JSON holds -----------------------------------------------------


def test_the_page_shows_a_quantity_of_38_digits():
    # invoice_lines.quantity is Decimal(38, 9): 29 digits before the point.
    assert quantity("12345678901234567890123456789.123456789") == "12,345,678,901,234,567,890,123,456,789.1235"
    document = _invoice_of("1.00")
    document["lines"][0]["quantity"] = "12345678901234567890123456789.5"
    assert "12,345,678,901,234,567,890,123,456,789.5" in render_html(document)


def test_the_page_shows_no_negative_zero_quantity():
    assert quantity("-0.00004") == "0"
    assert quantity("-0") == "0"
    assert quantity("-3.25") == "-3.25"
    assert quantity("2.99996") == "3"
    document = _invoice_of("-0.02")
    document["lines"][0]["quantity"] = "-0.00001"
    view = invoice_view(document)
    assert view["lines"][0]["quantity"] == "0"


# --- one quantity for one thing -------------------------------------------------------------


def test_a_prorated_fee_shows_the_share_its_span_and_invoice_lines_keep():
    price = FlatPrice(key="base", model="flat", amount=D(30))
    plan = Plan(key="pro", currency="USD", prices=[price])
    line = flat_line(price, plan, (datetime(2026, 11, 21, tzinfo=UTC), DEC), Period(0, NOV, DEC, DEC), "")
    shown = line.as_dict("USD")
    assert shown["quantity"] == shown["service_spans"][0]["quantity"] == "0.333333333"  # was 28 digits of 3
    assert shown["quantity"] == str(stored_quantity(line.quantity))
    assert shown["amount"] == "10.00"
