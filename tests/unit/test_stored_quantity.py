"""``stored_quantity``: a line's quantity as ``invoice_lines.quantity`` (Decimal(38, 9)) keeps it,
truncated as clickhouse-connect truncates (``int(Decimal(str(x)) * 10**9)``), for every
quantity the column holds. In the default 28-digit context a quantity of 10**19 or more
raised, and the exception stopped the rating run of every customer."""

from __future__ import annotations

from decimal import Context, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.rating.invoice import stored_quantity
from bastionary.rating.rater import Rater
from tests.unit.test_rater import AFTER_JAN, GRACE, PRO, TOKENS, FakeBillingStore, FakePublisher, Reading, at

D = Decimal
WIDE = Context(prec=80)


def test_a_quantity_that_fits_invoice_lines_is_kept_at_its_scale():
    assert stored_quantity(D("12345678901234567890.5")) == D("12345678901234567890.500000000")


@settings(max_examples=500, deadline=None)
@given(
    st.decimals(min_value=-(D(10) ** 29) + 1, max_value=D(10) ** 29 - 1, allow_nan=False, allow_infinity=False)
    | st.fractions(min_value=-1000, max_value=1000).map(lambda f: D(f.numerator) / D(f.denominator))
)
def test_it_truncates_as_the_clickhouse_client_writes(quantity):
    written = int(WIDE.multiply(quantity, D(10) ** 9))  # toward zero, as the client's int() does
    assert stored_quantity(quantity) == WIDE.divide(D(written), D(10) ** 9)


async def test_a_huge_but_storable_usage_is_rated_and_the_run_goes_on():
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.subscribe("sub-2", "cust-2")
    store.use("cust-1", 1000, at(2024, 1, 10))
    store.readings.append(Reading("llm_tokens", "cust-2", at(2024, 1, 10), at(2024, 1, 10), D(10) ** 19))
    invoices = (await Rater(store, [PRO], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)).invoices
    assert sorted(d["customer_id"] for d in invoices) == ["cust-1", "cust-2"]


async def test_an_invoice_line_states_every_digit_of_a_huge_quantity():
    """Until 2026-12-07 the line's quantity was written in the default 28-digit context:
    12999999999999999999.99999999 for ...999999987 tokens."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    huge = D("12999999999999999999.999999987")
    store.readings.append(Reading("llm_tokens", "cust-1", at(2024, 1, 10), at(2024, 1, 10), huge))
    (invoice,) = (await Rater(store, [PRO], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)).invoices
    assert [line["quantity"] for line in invoice["lines"] if line.get("meter")] == [str(huge)]
