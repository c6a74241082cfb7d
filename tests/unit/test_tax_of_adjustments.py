"""A line adjusting an earlier period is taxed at the rates that period's invoice applied
(its ``tax_rates``), not at today's (rating/tax.py; README, "Invoices and tax"). Until
2026-12-04 a correction was taxed at today's rates: it gave back tax an exempt invoice never
took, and after a change of rate more or less than was collected."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from bastionary.rating.customers import CustomerTerms
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from bastionary.rating.tax import Invoicing, TaxProfile, TaxRate, grouped_tax_lines, rates_of_document, tax_lines
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import (
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    FEB,
    GRACE,
    JAN,
    PRO,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal


def plan(key: str, currency: str = "USD", interval: str = "P1M", **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": currency, "billing_interval": interval, **extra})


def _vat(rate: str) -> Invoicing:
    return Invoicing(taxes=[TaxRate(key="vat", name=f"VAT {rate}", rate=D(rate), countries=["DE"])])


def _corrected() -> FakeBillingStore:
    """January: 20.00 fee + 100.00 usage. February's invoice takes back 80.00 of January's
    usage (a late correction) and bills its own 20.00 fee: subtotal -60.00."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.use("cust-1", 10000, at(2024, 1, 10))
    store.use("cust-1", -8000, at(2024, 1, 20), ingested=FEB + GRACE + GRACE)
    return store


async def test_a_correction_gives_back_no_tax_that_was_never_collected():
    store, publish = _corrected(), FakePublisher()
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE", exempt=True))
    (january,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_JAN)
    ).invoices
    assert january["tax"] == "0.00"
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))  # taxable since
    (february,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_FEB)
    ).invoices
    assert february["subtotal"] == "-60.00"
    assert D(january["tax"]) + D(february["tax"]) >= 0  # -11.40: tax never collected, given back


async def test_a_correction_reverses_tax_at_the_rate_it_was_collected_at():
    store, publish = _corrected(), FakePublisher()
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    (january,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_JAN)
    ).invoices
    assert january["tax"] == "22.80"
    (february,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.25")).run_once(AFTER_FEB)
    ).invoices
    # January's 15.20 on the 80.00 reversed, February's own fee taxed 5.00: -10.20, not -15.00.
    assert D(february["tax"]) == D("-10.20")


async def test_late_usage_is_taxed_at_the_rate_of_the_period_it_belongs_to():
    """February carries 30.00 of January's usage, late: at January's 19%, beside its own fee
    at 25%. One tax key, two rates, two lines."""
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    store.use("cust-1", 3000, at(2024, 1, 20), ingested=FEB + GRACE + GRACE)
    await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_JAN)
    (february,) = (
        await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.25")).run_once(AFTER_FEB)
    ).invoices
    taxed = sorted((line["rate"], line["taxable"], line["amount"]) for line in february["tax_lines"])
    assert taxed == [("0.19", "30.00", "5.70"), ("0.25", "20.00", "5.00")]
    assert february["tax"] == "10.70"
    assert february["tax_rates"] == [{"key": "vat", "name": "VAT 0.25", "rate": "0.25", "inclusive": False}]


def test_an_invoice_rated_before_tax_rates_existed_names_its_rates_by_its_tax_lines():
    line = {"key": "vat", "name": "VAT", "rate": "0.19", "inclusive": False, "taxable": "10.00", "amount": "1.90"}
    (rate,) = rates_of_document({"subtotal": "10.00", "tax_lines": [line]}) or []
    assert (rate.key, rate.rate, rate.inclusive) == ("vat", D("0.19"), False)
    assert rates_of_document({"subtotal": "10.00", "tax_lines": []}) == []  # exempt, or no rate applied
    assert rates_of_document({"subtotal": "0.00", "tax_lines": []}) is None  # a zero subtotal tells nothing


RATES = [
    TaxRate(key="vat", name="VAT", rate=D("0.19")),
    TaxRate(key="gst", name="GST", rate=D("0.1"), inclusive=True),
]


@given(
    st.lists(st.integers(-(10**9), 10**9).map(lambda cents: D(cents) / 100), max_size=6),
    st.sampled_from([[], RATES[:1], RATES]),
)
def test_lines_at_one_set_of_rates_are_taxed_as_one_subtotal(amounts, rates):
    grouped = grouped_tax_lines([(amount, rates) for amount in amounts], "USD")
    assert grouped == tax_lines(sum(amounts, D(0)), "USD", rates)


# --- found by the review of 2026-12-04 (each failed before its fix) -------------------------


def _taxed(invoices: list[dict]) -> Decimal:
    return sum((D(i["tax"]) for i in invoices), D(0))


ADV = plan("adv", prices=[{"key": "base", "model": "flat", "amount": "30", "billing_timing": "advance"}])


async def test_refund_of_a_removed_invoiced_period_reverses_the_tax_it_collected():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    first = Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19"))
    invoices = (await first.run_once(AFTER_JAN)).invoices + (await first.run_once(AFTER_FEB)).invoices
    assert [i["tax"] for i in invoices] == ["3.80", "3.80"]  # 20.00 fee each, at 19%
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "pro", None, None, FEB))
    later = (await Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.25")).run_once(AFTER_MAR)).invoices
    (final,) = [i for i in later if i["kind"] == "final_adjustment"]
    assert final["subtotal"] == "-20.00"  # February's fee given back
    assert final["tax"] == "-3.80"  # observed -5.00: reversed at 25%, collected at 19%


async def test_refund_of_a_removed_period_gives_back_no_tax_an_exempt_invoice_never_took():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE", exempt=True))
    rate = Rater(store, [PRO], [TOKENS], GRACE, publish, invoicing=_vat("0.19"))
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    assert _taxed(invoices) == 0
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))  # taxable since
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "pro", None, None, FEB))
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    assert _taxed(invoices) >= 0  # observed -3.80: tax never collected, given back


async def test_an_advance_fee_refunded_by_a_cancellation_gives_back_no_tax_never_collected():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="adv")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE", exempt=True))
    rate = Rater(store, [ADV], [TOKENS], GRACE, publish, invoicing=_vat("0.19"))
    invoices = (await rate.run_once(AFTER_JAN)).invoices  # January's invoice bills February's 30.00
    assert _taxed(invoices) == 0
    assert per_period(invoices)[FEB.isoformat()] == D("30.00")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))  # taxable since
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(at(2024, 2, 20))).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("14.48")  # 15.52 of the fee given back
    assert _taxed(invoices) >= 0  # observed -2.95: 19% of 15.52 given back, never collected


async def test_an_advance_fee_true_up_is_reversed_at_the_rate_it_was_collected_at():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="adv")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    await Rater(store, [ADV], [TOKENS], GRACE, publish, invoicing=_vat("0.19")).run_once(AFTER_JAN)
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 2, 15)))
    feb = (
        await Rater(store, [ADV], [TOKENS], GRACE, publish, invoicing=_vat("0.25")).run_once(at(2024, 2, 20))
    ).invoices
    (period,) = [i for i in feb if i["kind"] == "period"]
    assert period["subtotal"] == "-15.52"
    # 30.00 for February was billed on January's invoice at 19%: 15.52 of it reversed at 19%.
    assert period["tax"] == "-2.95"  # observed -3.88 (25%)


def _rater(store: FakeBillingStore, plans: list[Plan], rate: str) -> Rater:
    return Rater(store, plans, [TOKENS], GRACE, FakePublisher(), invoicing=_vat(rate))


def _taxed_per_rate(invoice: dict) -> list[tuple[str, str, str]]:
    """The invoice's tax lines: (rate, taxable, amount)."""
    return sorted((t["rate"], t["taxable"], t["amount"]) for t in invoice["tax_lines"])


async def test_advance_fee_first_billed_on_its_own_period_invoice_is_adjusted_at_that_invoices_rate():
    """Created on 1 January on ADV, received on 10 February (no backfill): January is not
    rated, so no invoice billed February's fee before February's own invoice (at 19%, with
    March's). A cancellation on 20 February, received later, takes back 10.34 of February's
    fee on the final adjustment (rated at 25%): it was collected at 19% on February's
    invoice, so 1.96 goes back; 0220d78 looks for January's invoice, finds none (skipped), and
    reverses at today's 25% (2.59)."""
    store = FakeBillingStore()
    store.events.append(
        SubscriptionEvent("sub-1", "cust-1", "created", "adv", at(2024, 1, 1), None, at(2024, 1, 1), at(2024, 2, 10))
    )
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    first = (await _rater(store, [ADV], "0.19").run_once(AFTER_FEB)).invoices
    assert [(i["kind"], i["subtotal"], i["tax"]) for i in first] == [
        ("period", "60.00", "11.40")
    ]  # Feb's and Mar's fees
    store.events.append(
        SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 2, 20), at(2024, 3, 5))
    )
    (final,) = (await _rater(store, [ADV], "0.25").run_once(at(2024, 3, 5))).invoices
    assert final["kind"] == "final_adjustment"
    assert per_period(first + [final]) == {FEB.isoformat(): D("19.66"), at(2024, 3, 1).isoformat(): D("0.00")}
    # -10.34 (February) and -30.00 (March): both billed on February's invoice at 19%.
    assert _taxed_per_rate(final) == [("0.19", "-40.34", "-7.66")]  # observed: -10.34 at 0.25 (-2.59), -30.00 at 0.19


async def test_advance_fee_billed_on_a_plan_change_invoice_is_refunded_at_the_rate_it_was_collected_at():
    """January on PRO, invoiced at 19%. On 10 February the customer moves to ADV (30.00 in
    advance): the plan change's advance invoice bills February's 20/29 share, 20.69, at 25%.
    A cancellation on 15 February takes 15.52 of it back on February's invoice: the tax
    collected on it was 25%, so 3.88 is owed back. Until 2026-12-05 (rates_first_billed) it
    was reversed at January's 19% (2.95), though January's invoice never billed this fee."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    await _rater(store, [PRO, ADV], "0.19").run_once(AFTER_JAN)
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "adv", None, None, at(2024, 2, 10)))
    later = _rater(store, [PRO, ADV], "0.25")
    (advance,) = (await later.run_once(at(2024, 2, 11))).invoices
    assert advance["kind"] == "advance" and advance["subtotal"] == "20.69" and advance["tax"] == "5.17"
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 2, 15)))
    invoices = (await later.run_once(at(2024, 2, 20))).invoices
    (feb,) = [i for i in invoices if i["kind"] == "period"]
    refund = [line for line in feb["lines"] if line.get("billing_timing") == "advance"]
    assert [line["amount"] for line in refund] == ["-15.52"]
    # Every line of February's invoice at 25%: its own fee (PRO, 1-10 Feb, 6.21) and the refund
    # (before the fix, [("0.19", "-15.52", "-2.95"), ("0.25", "6.21", "1.55")]: 0.93 of tax kept).
    assert _taxed_per_rate(feb) == [("0.25", "-9.31", "-2.33")]


async def test_a_first_period_s_fee_billed_on_its_advance_invoice_is_refunded_at_that_invoice_s_rate():
    """Subscribed on 1 January to ADV: its advance invoice bills January's 30.00 at 19%. The
    rate is 25% when a cancellation on 15 January, known before January's invoice, gives back
    16/31 of the fee (15.48): at 19%, where it was collected. Until 2026-12-05 the refund was
    taxed at the period invoice's own 25% (no invoice before the first period to look at)."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="adv")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    (first,) = (await _rater(store, [ADV], "0.19").run_once(at(2024, 1, 1, 2))).invoices
    assert (first["kind"], first["subtotal"], first["tax"]) == ("advance", "30.00", "5.70")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "adv", None, None, at(2024, 1, 16)))
    (january,) = [i for i in (await _rater(store, [ADV], "0.25").run_once(AFTER_JAN)).invoices if i["kind"] == "period"]
    assert _taxed_per_rate(january) == [("0.19", "-15.48", "-2.94")]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
FIELDS = st.sampled_from(["subtotal", "tax_lines", "tax_rates", "key", "name", "rate", "inclusive"])


@given(st.dictionaries(FIELDS, JSON | st.lists(st.dictionaries(FIELDS, JSON, max_size=5), max_size=3), max_size=4))
def test_a_stored_document_of_any_shape_names_rates_or_none_and_never_raises(document):
    """A document edited by hand or damaged must not stop the rating run: its rates are then
    unknown (today's are used)."""
    rates = rates_of_document(document)
    assert rates is None or all(isinstance(rate, TaxRate) for rate in rates)


async def test_fees_in_advance_of_a_plan_replaced_from_the_start_are_given_back_as_billed():
    """On ADV (30.00 in advance) from 1 January: its advance invoice bills January at 19%, and
    January's invoice February at 25%. In February, a change to B (10.00 in arrears) effective
    1 January replaces ADV from the start: February's invoice, at 30%, gives both fees back,
    each at the rate it was collected at, and bills B for both months. Until 2026-12-05
    February's fee was not given back on February's invoice (February cost 40.00 until the
    next one), and January's was given back at January's invoice's 25%."""
    b = plan("b", prices=[{"key": "base", "model": "flat", "amount": "10"}])
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="adv")
    store.terms["cust-1"] = CustomerTerms(tax=TaxProfile(country="DE"))
    invoices = (await _rater(store, [ADV, b], "0.19").run_once(at(2024, 1, 1, 2))).invoices
    invoices += (await _rater(store, [ADV, b], "0.25").run_once(AFTER_JAN)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, JAN))
    (february,) = (await _rater(store, [ADV, b], "0.30").run_once(AFTER_FEB)).invoices
    assert per_period([*invoices, february]) == {JAN.isoformat(): D("10.00"), FEB.isoformat(): D("10.00")}
    assert _taxed_per_rate(february) == [
        ("0.19", "-30.00", "-5.70"),  # January's ADV fee, collected on its advance invoice
        ("0.25", "-20.00", "-5.00"),  # February's ADV fee (January's invoice), and B's January
        ("0.3", "10.00", "3.00"),  # B's February
    ]


async def test_a_first_period_s_fee_in_advance_of_a_plan_replaced_from_the_start_is_given_back_on_its_invoice():
    """ADV's advance invoice bills January's 30.00; a change to B (10.00 in arrears) effective
    1 January arrives before January's invoice, which gives the 30.00 back and bills 10.00.
    Until 2026-12-05 January's invoice, with no earlier period and no fee in advance of its
    own, did not read what was billed, and January cost 40.00 until February's invoice."""
    b = plan("b", prices=[{"key": "base", "model": "flat", "amount": "10"}])
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="adv")
    invoices = (await _rater(store, [ADV, b], "0.19").run_once(at(2024, 1, 1, 2))).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, JAN))
    invoices += (await _rater(store, [ADV, b], "0.19").run_once(AFTER_JAN)).invoices
    assert per_period(invoices) == {JAN.isoformat(): D("10.00")}
