"""Properties of rating that must hold for every input (hypothesis): invoices add up, totals
are never negative, credits are never over-applied, the price models agree where they must,
rounding is stable, and late usage is billed exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.credits.ledger import FUNDING_ORDER, Grant, allocate, remaining
from bastionary.money import MINOR_UNITS, minor_unit, round_money
from bastionary.rating.adjustments import adjustment_lines
from bastionary.rating.billed import add_billed
from bastionary.rating.invoice import Line, Period, Segment, Subscription, finalize, period_lines
from bastionary.rating.plans import Plan, Tier
from bastionary.rating.pricing import Usage, graduated, price_usage, volume

D = Decimal
UTC = UTC
JAN, FEB = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
JANUARY = Period(0, JAN, FEB, FEB)

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

currencies = st.sampled_from(sorted(MINOR_UNITS))


def decimals(low, high, places: int = 6) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=low, max_value=high, places=places, allow_nan=False, allow_infinity=False)


amounts = decimals(0, 10_000)
quantities = decimals(0, 100_000, places=3)


def in_minor_units(currency: str, low=0, high=500) -> st.SearchStrategy[Decimal]:
    return decimals(low, high, places=MINOR_UNITS[currency])


@st.composite
def grants(draw, currency: str, fractional: bool = False) -> list[Grant]:
    """Grants around a January period: some lapsed, some later, some voided, some in another currency."""
    around_feb = st.integers(-40, 40).map(lambda days: FEB + timedelta(days=days))
    other = "EUR" if currency != "EUR" else "USD"
    out = []
    for n in range(draw(st.integers(0, 5))):
        out.append(
            Grant(
                grant_id=f"g{n}",
                customer_id="cust-1",
                amount=draw(decimals(-5, 500) if fractional else in_minor_units(currency, -5)),
                currency=draw(st.sampled_from([currency, currency, currency, other])),
                priority=draw(st.integers(0, 3)),
                effective_at=draw(around_feb),
                expires_at=draw(st.none() | around_feb),
                voided_at=draw(st.none() | around_feb),
                funding=draw(st.sampled_from(["promotional", "paid", "carried"])),
            )
        )
    return out


@st.composite
def invoices(draw, fractional_grants: bool = False):
    currency = draw(currencies)
    lines = [
        Line(
            f"k{n}",
            None,
            f"line {n}",
            D(1),
            draw(decimals(-100, 10_000) if n == 0 and draw(st.booleans()) else amounts),
        )
        for n in range(draw(st.integers(0, 6)))
    ]
    the_grants = draw(grants(currency, fractional_grants))
    drawn = {
        g.grant_id: draw(decimals(0, 600, places=MINOR_UNITS[currency])) for g in the_grants if draw(st.booleans())
    }
    return currency, lines, the_grants, drawn


def rate(currency: str, lines: list[Line], the_grants: list[Grant], drawn: dict):
    sub = Subscription("sub-1", "cust-1", JAN, (Segment(Plan(key="p", currency=currency), JAN),))
    invoice, allocations = finalize(sub, Plan(key="p", currency=currency), JANUARY, lines, FEB, the_grants, drawn)
    return invoice.document(), allocations


# --- invoices -----------------------------------------------------------------------------


@PROPERTIES
@given(invoices())
def test_lines_sum_to_the_subtotal(invoice):
    currency, lines, the_grants, drawn = invoice
    data, _ = rate(currency, lines, the_grants, drawn)
    reported = [D(entry["amount"]) for entry in data["lines"]]
    assert reported == [round_money(line.amount, currency) for line in lines]  # each line rounded once
    assert sum(reported, D(0)) == D(data["subtotal"])  # and the subtotal is their sum


@PROPERTIES
@given(invoices())
def test_total_is_never_negative_and_the_invoice_adds_up(invoice):
    currency, lines, the_grants, drawn = invoice
    data, _ = rate(currency, lines, the_grants, drawn)
    subtotal, credits, total = D(data["subtotal"]), D(data["credits_applied"]), D(data["total"])
    assert total >= 0 and credits >= 0
    assert credits <= max(subtotal, D(0))
    assert total == max(D(0), subtotal - credits)
    for value in (credits, total):
        assert value == round_money(value, currency)


@PROPERTIES
@given(invoices(fractional_grants=True))
def test_credits_are_never_over_applied(invoice):
    """Holds for any grant amounts, fractions of a minor unit included."""
    currency, lines, the_grants, drawn = invoice
    data, allocations = rate(currency, lines, the_grants, drawn)
    left = remaining(the_grants, drawn)
    by_id = {g.grant_id: g for g in the_grants}
    assert sum((a.amount for a in allocations), D(0)) <= max(D(data["subtotal"]), D(0))
    assert len({a.grant_id for a in allocations}) == len(allocations)
    for allocation in allocations:
        grant = by_id[allocation.grant_id]
        assert 0 < allocation.amount <= left[grant.grant_id]
        assert grant.usable_at(JANUARY.end, currency)
    assert data["credit_allocations"] == [
        {"grant_id": a.grant_id, "amount": str(a.amount), "funding": a.funding} for a in allocations
    ]


@PROPERTIES
@given(invoices(fractional_grants=True), decimals(-50, 5_000))
def test_allocation_order_and_greed(invoice, total):
    """Grants are drawn in their order, each emptied before the next is touched."""
    currency, _, the_grants, drawn = invoice
    allocations = allocate(the_grants, drawn, total, currency, FEB)
    left = remaining(the_grants, drawn)
    cent = minor_unit(currency)  # draws are whole minor units
    usable = sorted((g for g in the_grants if g.usable_at(FEB, currency)), key=lambda g: g.order)
    expected, still = [], max(total, D(0))
    for grant in usable:
        take = min(left[grant.grant_id], still).quantize(cent, rounding=ROUND_DOWN)
        if take > 0:
            expected.append((grant.grant_id, take))
            still -= take
    assert [(a.grant_id, a.amount) for a in allocations] == expected
    ranks = [FUNDING_ORDER[a.funding] for a in allocations]  # promotional, then paid, then carried
    assert ranks == sorted(ranks)
    assert all(a.amount == left[a.grant_id].quantize(cent, rounding=ROUND_DOWN) for a in allocations[:-1])


# --- price models ----------------------------------------------------------------------


@st.composite
def tier_lists(draw, single: bool = False) -> list[Tier]:
    bounds = [] if single else sorted(set(draw(st.lists(decimals(D("0.001"), 10_000, places=3), max_size=4))))
    return [
        Tier(up_to=bound, unit_amount=draw(amounts), flat_amount=draw(amounts | st.just(D(0))))
        for bound in [*bounds, None]
    ]


@PROPERTIES
@given(tier_lists(single=True), quantities)
def test_volume_and_graduated_agree_on_a_single_tier(tiers, quantity):
    assert graduated(tiers, quantity).amount == volume(tiers, quantity).amount
    expected = quantity * tiers[0].unit_amount + tiers[0].flat_amount if quantity > 0 else 0
    assert graduated(tiers, quantity).amount == expected


@PROPERTIES
@given(tier_lists(), quantities)
def test_volume_and_graduated_agree_inside_the_first_tier(tiers, quantity):
    if tiers[0].up_to is None or quantity <= tiers[0].up_to:
        assert graduated(tiers, quantity).amount == volume(tiers, quantity).amount


@PROPERTIES
@given(tier_lists(), quantities, quantities)
def test_graduated_never_decreases_and_sums_its_tiers(tiers, a, b):
    low, high = sorted((a, b))
    assert graduated(tiers, low).amount <= graduated(tiers, high).amount
    priced = graduated(tiers, high)
    assert sum((D(t["amount"]) for t in priced.tiers), D(0)) == priced.amount
    assert sum((D(t["units"]) for t in priced.tiers), D(0)) == high


@PROPERTIES
@given(decimals(D("0.001"), 1000, places=3), amounts, quantities)
def test_package_rounds_up_to_whole_packages(size, package_amount, quantity):
    p = Plan.model_validate(
        {"key": "x", "currency": "USD", "prices": [
            {"key": "p", "model": "package", "meter": "m", "package_size": size, "package_amount": package_amount}]}
    ).prices[0]  # fmt: skip
    packages = (quantity / size).to_integral_value(rounding=ROUND_CEILING)
    assert price_usage(p, Usage(quantity)).amount == packages * package_amount
    assert (packages - 1) * size < quantity <= packages * size or quantity == 0


@PROPERTIES
@given(decimals(0, 1), amounts, st.integers(0, 1000), quantities, st.tuples(amounts, amounts))
def test_percentage_stays_within_its_bounds(rate_, fixed, events, quantity, bounds):
    low, high = sorted(bounds)
    p = Plan.model_validate(
        {"key": "x", "currency": "USD", "prices": [
            {"key": "p", "model": "percentage", "meter": "m", "rate": rate_, "fixed_amount": fixed,
             "min_amount": low, "max_amount": high}]}
    ).prices[0]  # fmt: skip
    amount = price_usage(p, Usage(quantity, events)).amount
    unbounded = quantity * rate_ + fixed * events
    if events == 0:  # no usage, no minimum
        assert amount == min(unbounded, high)
        return
    assert low <= amount <= high
    assert amount == min(max(unbounded, low), high)


# --- rounding ----------------------------------------------------------------------------


@PROPERTIES
@given(decimals(-(10**9), 10**9, places=9), currencies)
def test_round_money_is_stable(amount, currency):
    once = round_money(amount, currency)
    assert round_money(once, currency) == once  # idempotent
    assert once.as_tuple().exponent == -MINOR_UNITS[currency]
    assert abs(once - amount) <= minor_unit(currency) / 2
    if abs(once - amount) == minor_unit(currency) / 2:  # a tie goes away from zero
        assert abs(once) > abs(amount)


@PROPERTIES
@given(st.lists(decimals(-1000, 1000, places=9), max_size=8), currencies)
def test_rounding_lines_then_summing_is_what_the_invoice_reports(values, currency):
    lines = [Line(f"k{n}", None, "x", D(1), value) for n, value in enumerate(values)]
    data, _ = rate(currency, lines, [], {})
    assert D(data["subtotal"]) == sum((round_money(v, currency) for v in values), D(0))


# --- late usage --------------------------------------------------------------------------

TOKENS_PLAN = Plan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "prices": [
            {"key": "base", "model": "flat", "amount": 10},
            {"key": "per_unit", "model": "per_unit", "meter": "tokens", "unit_amount": "0.0007"},
            {"key": "tiered", "model": "graduated", "meter": "tokens", "tiers": [
                {"up_to": 100, "unit_amount": "0.013", "flat_amount": 1}, {"up_to": None, "unit_amount": "0.0021"}]},
        ],
    }
)  # fmt: skip


@PROPERTIES
@given(st.lists(st.tuples(decimals(0, 500, places=2), st.integers(0, 6)), max_size=12))
def test_late_usage_is_billed_exactly_once(arrivals):
    """Events of January arriving on the first invoice (week 0) or on any of 6 later ones: the
    period's usage lines plus every adjustment add up to the price of all of it, rounded."""
    sub = Subscription("sub-1", "cust-1", JAN, (Segment(TOKENS_PLAN, JAN),))
    cutoffs = [FEB + timedelta(weeks=week, hours=1) for week in range(7)]
    events = [(value, cutoffs[week] - timedelta(minutes=1)) for value, week in arrivals]

    def usage(price, customer_id, start, end, as_of):
        seen = [value for value, ingested in events if ingested <= as_of]
        return Usage(sum(seen, D(0)), len(seen))

    billed: dict = {}

    def store(lines):
        add_billed(billed, lines, JAN, "USD")

    store(period_lines(sub, JANUARY, cutoffs[0], usage))
    for cutoff in cutoffs[1:]:
        store(adjustment_lines(sub, [JANUARY], cutoff, usage, billed, "USD"))

    final = {line.line_key: line for line in period_lines(sub, JANUARY, cutoffs[-1], usage)}
    for key in ("pro:per_unit", "pro:tiered"):
        assert billed[(JAN, key)][:2] == (final[key].quantity, round_money(final[key].amount, "USD"))
    assert billed[(JAN, "pro:base")][:2] == (D(1), D("10.00"))  # flat fees are billed once, never adjusted
