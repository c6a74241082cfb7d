"""Tax lines (``rating/tax.py``) are rounded once from the exact product of the subtotal and
the rate, at any subtotal: the oracle is integer arithmetic on fractions."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastionary.rating.tax import TaxRate, tax_lines

D = Decimal


def cents_half_up(exact: Fraction) -> Decimal:
    """``exact`` to the cent, half away from zero."""
    sign = -1 if exact < 0 else 1
    cents, rest = divmod(abs(exact) * 100, 1)
    return (sign * D(int(cents) + (rest >= Fraction(1, 2))) / 100).quantize(D("0.01"))


@settings(max_examples=300, deadline=None)
# 10^22 USD at 99.9999%: the exact tax ends in .499999 cents; rounded to 28 digits first it
# ended in .500 and went up a cent.
@example(subtotal=D("10000000000000000005000.01"), rate=D("0.999999"))
@given(
    subtotal=st.decimals(min_value=D("-1E+24"), max_value=D("1E+24"), places=2, allow_nan=False),
    rate=st.decimals(min_value=D("0.000001"), max_value=D("0.999999"), places=6, allow_nan=False),
)
def test_exclusive_tax_is_the_exact_product_rounded_once(subtotal, rate):
    lines = tax_lines(subtotal, "USD", [TaxRate(key="vat", name="VAT", rate=rate)])
    if subtotal == 0:
        assert lines == []
        return
    ((line,),) = [lines]
    assert D(line["amount"]) == cents_half_up(Fraction(subtotal) * Fraction(rate))
    assert D(line["taxable"]) == subtotal
