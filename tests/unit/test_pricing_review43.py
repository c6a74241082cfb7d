"""Found by the review of pricing and invoice arithmetic (2026-12-07), each confirmed by a script
first: a prorated fee on half a minor unit rounded down, an inclusive tax whose net and tax did
not add up to the subtotal, and an amount too large to round failing without saying which."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.money import round_money
from bastionary.rating.invoice import Period, Segment, Subscription, committed_minimum, finalize, period_lines
from bastionary.rating.plans import Plan
from bastionary.rating.pricing import Usage
from bastionary.rating.tax import TaxRate, tax_lines

D = Decimal
APRIL, MAY = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)


def monthly(currency: str, fee: str) -> Plan:
    return Plan.model_validate(
        {
            "key": "basic",
            "currency": currency,
            "minimum_commitment": fee,
            "prices": [{"key": "base", "model": "flat", "amount": fee}],
        }
    )


def half_up(exact: Fraction, places: int) -> Decimal:
    """``exact`` at ``places`` decimals, half away from zero: the oracle, in integers."""
    scaled = abs(exact) * 10**places
    units, rest = divmod(scaled, 1)
    rounded = int(units) + (rest >= Fraction(1, 2))
    return (D(rounded if exact >= 0 else -rounded) / 10**places).quantize(D(1).scaleb(-places))


def no_usage(*_: object) -> Usage:
    return Usage(D(0))


def april_cut_after(days: int) -> Period:
    return Period(0, APRIL, APRIL + timedelta(days=days), MAY)


def test_a_prorated_fee_on_half_a_minor_unit_rounds_half_up():
    # 19.95 for 1 day of April's 30 is 0.665 exactly: 0.67 half up (it was 0.66, the share
    # 1/30 rounded to 28 digits first); so is the minimum commitment's share.
    plan = monthly("USD", "19.95")
    period = april_cut_after(1)
    sub = Subscription("sub-1", "cust-1", APRIL, (Segment(plan, APRIL),), canceled_at=period.end)
    lines = period_lines(sub, period, MAY, no_usage)
    invoice, _ = finalize(sub, plan, period, lines, MAY, [], {})
    assert [line["amount"] for line in invoice.lines] == ["0.67"]
    assert invoice.subtotal == "0.67"
    assert committed_minimum(plan, "USD", period) == (D(86400) / D(2592000), D("0.67"))


@settings(max_examples=300, deadline=None)
@given(
    currency=st.sampled_from(["USD", "JPY", "BHD"]),
    fee_units=st.integers(min_value=1, max_value=10**9),
    days=st.integers(min_value=1, max_value=29),
)
def test_a_prorated_fee_is_its_exact_share_rounded_once(currency, fee_units, days):
    places = {"USD": 2, "JPY": 0, "BHD": 3}[currency]
    fee = D(fee_units).scaleb(-places)
    plan = monthly(currency, str(fee))
    period = april_cut_after(days)
    sub = Subscription("sub-1", "cust-1", APRIL, (Segment(plan, APRIL),), canceled_at=period.end)
    (line,) = period_lines(sub, period, MAY, no_usage)
    exact = Fraction(fee) * Fraction(days, 30)
    assert round_money(line.amount, currency) == half_up(exact, places)
    assert committed_minimum(plan, currency, period)[1] == half_up(exact, places)


VAT_20_INCLUDED = TaxRate(key="vat", name="VAT 20%", rate=D("0.2"), inclusive=True)
GST_QST_INCLUDED = [
    TaxRate(key="gst", name="GST 5%", rate=D("0.05"), inclusive=True),
    TaxRate(key="qst", name="QST 9.975%", rate=D("0.09975"), inclusive=True),
]


@pytest.mark.parametrize(
    ("subtotal", "taxable", "tax"),
    [
        ("120.03", "100.02", "20.01"),
        ("0.09", "0.07", "0.02"),
        ("-120.03", "-100.02", "-20.01"),
        ("120.00", "100.00", "20.00"),
    ],
)
def test_an_inclusive_tax_and_its_net_add_up_to_the_subtotal(subtotal, taxable, tax):
    # 120.03 with VAT 20% inside: VAT 20.005, 20.01 half up; the net shown was 100.025 rounded
    # on its own, 100.03, and the invoice read 100.03 + 20.01 = 120.04.
    (line,) = tax_lines(D(subtotal), "GBP", [VAT_20_INCLUDED])
    assert (line["taxable"], line["amount"]) == (taxable, tax)


@settings(max_examples=300, deadline=None)
@given(subtotal=st.decimals(min_value=D("-1E+9"), max_value=D("1E+9"), places=2, allow_nan=False))
def test_several_inclusive_taxes_and_their_net_add_up_to_the_subtotal(subtotal):
    lines = tax_lines(subtotal, "CAD", GST_QST_INCLUDED)
    if subtotal == 0:
        assert lines == []
        return
    nets = {line["taxable"] for line in lines}
    assert len(nets) == 1
    assert D(nets.pop()) + sum(D(line["amount"]) for line in lines) == subtotal
    # Each tax is still the exact share of the net, rounded once.
    net = Fraction(subtotal) / (1 + Fraction(D("0.05")) + Fraction(D("0.09975")))
    assert [D(line["amount"]) for line in lines] == [half_up(net * Fraction(t.rate), 2) for t in GST_QST_INCLUDED]


def test_an_exclusive_tax_beside_an_inclusive_one_is_on_the_whole_subtotal():
    lines = tax_lines(D("110.00"), "USD", [VAT_20_INCLUDED, TaxRate(key="levy", name="Levy", rate=D("0.05"))])
    assert [(line["taxable"], line["amount"]) for line in lines] == [("91.67", "18.33"), ("110.00", "5.50")]


def test_an_amount_too_large_to_round_says_which_and_why():
    # An invoice that cannot be priced is logged with this error: it read
    # "InvalidOperation([<class 'decimal.InvalidOperation'>])" and named nothing.
    with pytest.raises(InvalidOperation, match=r"1E\+27 USD cannot be rounded to its minor unit: more than 28 digits"):
        round_money(D("1E+27"), "USD")
    with pytest.raises(ArithmeticError, match="Infinity JPY cannot be rounded to its minor unit: not a finite amount"):
        round_money(D("Infinity"), "JPY")
    assert round_money(D("9999999999999999999999999.995"), "BHD") == D("9999999999999999999999999.995")
