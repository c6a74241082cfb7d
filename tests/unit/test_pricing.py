"""The price models in ``rating/pricing.py`` against worked examples from the public pricing
docs of Stripe and Lago (the page is cited above each test), and against hand-computed
examples where a page gives the rule but no numbers.

Amounts are compared unrounded: ``price_usage`` never rounds (the invoice rounds each line).
The numbers used in docs/pricing.md are checked here.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from bastionary.catalog import parse_catalog
from bastionary.money import round_money
from bastionary.rating.plans import FlatPrice, GraduatedPrice, PercentagePrice, Plan, VolumePrice
from bastionary.rating.pricing import Priced, Usage, graduated, price_usage, volume

D = Decimal


def price(model: str, **fields):
    """A price as the catalog YAML would give it (strings and numbers, validated by pydantic)."""
    plan = Plan.model_validate(
        {"key": "test", "currency": "USD", "prices": [{"key": "p", "model": model, "meter": "m", **fields}]}
    )
    return plan.prices[0]


def amount(p, quantity, events: int = 0) -> Decimal:
    return price_usage(p, Usage(D(str(quantity)), events)).amount


# --- Stripe: tiered pricing, volume vs graduated ----------------------------------------

# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing
# "Typographic" tiers: fonts 1-5 at 7 USD, 6-10 at 6.5 USD, 11+ at 6 USD.
TYPOGRAPHIC = [
    {"up_to": 5, "unit_amount": 7},
    {"up_to": 10, "unit_amount": "6.5"},
    {"up_to": None, "unit_amount": 6},
]


# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing (section "Volume-based
# pricing": the table of quantity -> total monthly cost).
@pytest.mark.parametrize(("fonts", "total"), [(1, "7"), (5, "35"), (6, "39"), (20, "120"), (25, "150")])
def test_stripe_volume_based_pricing(fonts, total):
    assert amount(price("volume", tiers=TYPOGRAPHIC), fonts) == D(total)


# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing (section "Graduated
# pricing"). The page states 5 fonts cost 35 USD, as with volume pricing, and that "the
# quantity is multiplied by the amount for each tier and the totals for each tier are summed";
# the excerpt the search tool returned stops before the page's table, so the totals for 6, 20
# and 25 fonts are hand-computed by that rule: 6 = 5x7 + 1x6.5; 20 = 35 + 5x6.5 + 10x6;
# 25 = 35 + 32.5 + 15x6.
@pytest.mark.parametrize(("fonts", "total"), [(1, "7"), (5, "35"), (6, "41.5"), (20, "127.5"), (25, "157.5")])
def test_stripe_graduated_pricing(fonts, total):
    assert amount(price("graduated", tiers=TYPOGRAPHIC), fonts) == D(total)


def test_graduated_explains_each_tier():
    priced = price_usage(price("graduated", tiers=TYPOGRAPHIC), Usage(D(20)))
    assert [(t["tier"], t["up_to"], t["units"], D(t["amount"])) for t in priced.tiers] == [
        (1, "5", "5", 35),
        (2, "10", "5", D("32.5")),
        (3, None, "10", 60),
    ]
    assert sum(D(t["amount"]) for t in priced.tiers) == priced.amount


def test_volume_explains_the_one_tier_reached():
    priced = price_usage(price("volume", tiers=TYPOGRAPHIC), Usage(D(6)))
    assert [(t["tier"], t["units"], t["unit_amount"], D(t["amount"])) for t in priced.tiers] == [(2, "6", "6.5", 39)]


# The Stripe page notes that with volume pricing "the total might decrease" as usage grows;
# hand-computed with a steeper second tier. Graduated totals never decrease.
def test_volume_total_can_decrease_graduated_cannot():
    tiers = [{"up_to": 10, "unit_amount": 10}, {"up_to": None, "unit_amount": 5}]
    assert amount(price("volume", tiers=tiers), 10) == 100
    assert amount(price("volume", tiers=tiers), 11) == 55
    assert amount(price("graduated", tiers=tiers), 11) == 105


# --- Stripe: transform quantity (packages, rounded up) ----------------------------------


# https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities
# Car rental: usage reported in minutes, 10 USD per hour, divide_by 60, round up:
# "If a customer rents the car for 150 minutes, that customer is charged 30 USD for 3 hours".
def test_stripe_transform_quantity_car_rental():
    hourly = price("package", package_size=60, package_amount=10)
    priced = price_usage(hourly, Usage(D(150)))
    assert priced.amount == 30
    assert priced.tiers == [{"packages": "3"}]


# https://stripe.com/docs/billing/subscriptions/quantity-transformation
# "10 USD for every 5 users (or portion thereof)": 1, 3, 5 users -> 10 USD; 6, 7 -> 20 USD.
@pytest.mark.parametrize(("users", "total"), [(1, 10), (3, 10), (5, 10), (6, 20), (7, 20)])
def test_stripe_quantity_transformation_per_5_users(users, total):
    assert amount(price("package", package_size=5, package_amount=10), users) == total


# --- Stripe: flat amounts per tier --------------------------------------------------------


# https://docs.stripe.com/billing/subscriptions/usage-based-v1/use-cases/flat-fee-and-overages
# Rates 0-1000 tokens at 0 USD, 1000+ at 0.04 USD (plus 100 USD per user, a flat price). The
# page gives the rates but no totals; hand-computed: 1,000 tokens cost 0, 1,500 cost 500 x 0.04.
@pytest.mark.parametrize(("tokens", "total"), [(0, "0"), (999, "0"), (1000, "0"), (1500, "20.00")])
def test_stripe_included_usage_then_overage(tokens, total):
    overage = price("graduated", tiers=[{"up_to": 1000, "unit_amount": 0}, {"up_to": None, "unit_amount": "0.04"}])
    assert amount(overage, tokens) == D(total)


# Stripe's API reference defines a tier's flat_amount as "the flat billing amount for an entire
# tier, regardless of the number of units in the tier" (seen through a client library's copy:
# https://hexdocs.pm/tiger_stripe/Stripe.Params.PriceCreateParams.Tiers.html). No worked
# example with numbers was found on docs.stripe.com: hand-computed, with tier 1 (up to 5 units)
# at 7 + a flat 10, tier 2 at 6 + a flat 20.
FLAT_TIERS = [{"up_to": 5, "unit_amount": 7, "flat_amount": 10}, {"up_to": None, "unit_amount": 6, "flat_amount": 20}]


@pytest.mark.parametrize(("units", "graduated_total", "volume_total"), [
    (0, "0", "0"),     # zero usage enters no tier: no flat fee either
    (1, "17", "17"),   # 1x7 + 10
    (5, "45", "45"),   # 5x7 + 10
    (6, "71", "56"),   # graduated: 45 + (1x6 + 20); volume: 6x6 + 20
    (10, "95", "80"),  # graduated: 45 + (5x6 + 20); volume: 10x6 + 20
])  # fmt: skip
def test_flat_amount_per_tier(units, graduated_total, volume_total):
    assert amount(price("graduated", tiers=FLAT_TIERS), units) == D(graduated_total)
    assert amount(price("volume", tiers=FLAT_TIERS), units) == D(volume_total)


# --- Lago charge models -----------------------------------------------------------------


# https://getlago.com/docs/guide/plans/charges/charge-models/standard
# "$0.05 per API call ... 1,000 API calls ... $0.05 x 1,000 API calls = $50".
def test_lago_standard():
    assert amount(price("per_unit", unit_amount="0.05"), 1000) == 50


# https://getlago.com/docs/guide/plans/charges/charge-models/graduated
# "$1 per unit for the first 100 units, then $0.50 per unit for the next 100 calls and
# finally, $0.10 for any additional unit". The page gives no total: hand-computed.
@pytest.mark.parametrize(("calls", "total"), [(50, "50"), (100, "100"), (150, "125"), (200, "150"), (250, "155")])
def test_lago_graduated(calls, total):
    tiers = [
        {"up_to": 100, "unit_amount": 1},
        {"up_to": 200, "unit_amount": "0.50"},
        {"up_to": None, "unit_amount": "0.10"},
    ]
    assert amount(price("graduated", tiers=tiers), calls) == D(total)


# https://getlago.com/docs/guide/plans/charges/charge-models/volume
# Tiers up to 10,000 at $0.0010, 50,000 at $0.0008, 100,000 at $0.0006, then $0.0004, each with
# a $10 fee: "65,000 API calls would cost 65,000 x $0.0006 + $10 = $49".
def test_lago_volume_with_flat_fee():
    tiers = [
        {"up_to": 10_000, "unit_amount": "0.0010", "flat_amount": 10},
        {"up_to": 50_000, "unit_amount": "0.0008", "flat_amount": 10},
        {"up_to": 100_000, "unit_amount": "0.0006", "flat_amount": 10},
        {"up_to": None, "unit_amount": "0.0004", "flat_amount": 10},
    ]
    assert amount(price("volume", tiers=tiers), 65_000) == 49


# https://getlago.com/docs/guide/plans/charges/charge-models/package
# "$5 per 100 units and offer the first 100 units ... 201 units would cost $0 (first 100
# units) + $5 (next 100 units) + $5 (last unit) = $10". Our package price has no free units:
# the 101 units past the free 100 cost $10; all 201 units, with nothing free, cost $15.
def test_lago_package():
    per_100 = price("package", package_size=100, package_amount=5)
    assert amount(per_100, 201 - 100) == 10
    assert amount(per_100, 201) == 15
    assert amount(per_100, 100) == 5  # a full package is not rounded up to the next one
    assert amount(per_100, 0) == 0  # no usage, no package (Stripe's round up: 0 / n = 0)


# https://getlago.com/docs/guide/plans/charges/charge-models/percentage
# 1.2% of the amount plus $0.10 per transaction; with the first 3 events and first $500 free,
# "for the fourth transaction, the charge will be $0.10 x 1 event + 1.2% of $50 = $0.70".
# We have no free units: pricing just that transaction gives $0.70; the whole period (4
# transactions, $450) with nothing free gives 1.2% x 450 + 4 x 0.10 = $5.80.
def test_lago_percentage():
    p = price("percentage", rate="0.012", fixed_amount="0.10")
    assert amount(p, 50, events=1) == D("0.70")
    assert amount(p, 200 + 100 + 100 + 50, events=4) == D("5.80")


# https://getlago.com/docs/templates/per-transaction/stripe : card payments online, 2.9% +
# $0.30 per transaction. Lago's minimum and maximum are per transaction; ours (min_amount,
# max_amount) bound the period's total. Hand-computed with a $5 minimum and a $50 maximum.
@pytest.mark.parametrize(("volume_usd", "transactions", "total"), [
    ("100", 2, "5"),        # 2.90 + 0.60 = 3.50 -> raised to the minimum
    ("1000", 5, "30.5"),    # 29.00 + 1.50, inside the bounds
    ("10000", 10, "50"),    # 290 + 3 = 293 -> capped at the maximum
])  # fmt: skip
def test_percentage_min_and_max_bound_the_period(volume_usd, transactions, total):
    p = price("percentage", rate="0.029", fixed_amount="0.30", min_amount=5, max_amount=50)
    assert amount(p, volume_usd, events=transactions) == D(total)


def test_percentage_fixed_amount_is_per_event_not_per_period():
    p = price("percentage", rate="0", fixed_amount="0.30")
    assert amount(p, 0, events=0) == 0
    assert amount(p, 0, events=7) == D("2.10")


def test_percentage_minimum_applies_only_to_a_period_with_usage():
    """The minimum is a floor on what usage costs: a period without events costs nothing."""
    p = price("percentage", rate="0.029", fixed_amount="0.30", min_amount=5)
    assert amount(p, 0, events=0) == 0
    assert amount(p, 10, events=1) == 5
    assert amount(price("percentage", rate="0.029"), 0) == 0


def test_percentage_explains_rate_and_events():
    priced = price_usage(price("percentage", rate="0.029", fixed_amount="0.30"), Usage(D(100), 3))
    assert priced.amount == D("3.80")
    assert priced.tiers == []  # its own fields, not tiers
    assert priced.percentage == {
        "rate": "0.029",
        "value": "100",
        "events": 3,
        "fixed_amount": "0.30",
        "min_amount": None,
        "max_amount": None,
    }


# --- choices documented in pricing.py -----------------------------------------------------


@pytest.mark.parametrize("model", ["graduated", "volume"])
def test_zero_usage_costs_nothing_in_tiered_prices(model):
    tiers = [{"up_to": 10, "unit_amount": 1, "flat_amount": 99}, {"up_to": None, "unit_amount": 1, "flat_amount": 5}]
    priced = price_usage(price(model, tiers=tiers), Usage(D(0)))
    assert priced == Priced(D(0), [])


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("per_unit", {"unit_amount": 2}),
        ("graduated", {"tiers": [{"up_to": None, "unit_amount": 2, "flat_amount": 3}]}),
        ("volume", {"tiers": [{"up_to": None, "unit_amount": 2, "flat_amount": 3}]}),
        ("package", {"package_size": 10, "package_amount": 2}),
        ("percentage", {"rate": "0.5", "fixed_amount": 1}),
    ],
)
def test_negative_usage_is_priced_as_zero(model, fields):
    assert amount(price(model, **fields), -5, events=0) == 0


def test_tier_bounds_are_inclusive():
    tiers = [{"up_to": 5, "unit_amount": 1}, {"up_to": None, "unit_amount": 10, "flat_amount": 100}]
    assert amount(price("graduated", tiers=tiers), 5) == 5  # tier 2 (and its flat fee) not entered
    assert amount(price("graduated", tiers=tiers), "5.5") == D("110")  # 5 + 0.5x10 + 100
    assert amount(price("volume", tiers=tiers), 5) == 5
    assert amount(price("volume", tiers=tiers), "5.000001") == D("150.00001")


def test_amounts_are_not_rounded_by_pricing():
    assert amount(price("per_unit", unit_amount="0.0001"), 3) == D("0.0003")
    assert amount(price("package", package_size=3, package_amount="0.333"), 4) == D("0.666")


def test_single_tier_tiered_prices_equal_per_unit():
    tiers = [{"up_to": None, "unit_amount": "0.25"}]
    for q in (0, 1, 7, "3.5"):
        assert amount(price("graduated", tiers=tiers), q) == amount(price("volume", tiers=tiers), q)
        assert amount(price("graduated", tiers=tiers), q) == amount(price("per_unit", unit_amount="0.25"), q)


def test_functions_take_tiers_directly():
    tiers = price("graduated", tiers=TYPOGRAPHIC).tiers
    assert graduated(tiers, D(6)).amount == D("41.5")
    assert volume(tiers, D(6)).amount == D(39)


def test_flat_price_is_not_a_usage_price():
    with pytest.raises(TypeError):
        price_usage(FlatPrice(key="base", model="flat", amount=D(10)), Usage(D(1)))


# --- catalog rules for prices -------------------------------------------------------------


@pytest.mark.parametrize(
    "tiers",
    [
        [],  # at least one tier
        [{"up_to": 10}],  # the last tier must be unbounded
        [{"up_to": None}, {"up_to": 10}],  # ... and only the last
        [{"up_to": None}, {"up_to": None}],
        [{"up_to": 10}, {"up_to": 10}, {"up_to": None}],  # strictly increasing
        [{"up_to": 10}, {"up_to": 5}, {"up_to": None}],
        [{"up_to": 0}, {"up_to": None}],  # positive
        [{"up_to": -1}, {"up_to": None}],
        [{"up_to": "inf"}],
        [{"up_to": None, "unit_amount": -1}],  # amounts are never negative
        [{"up_to": None, "flat_amount": "NaN"}],
        [{"unit_amount": 1}],  # up_to is required, null included
        [{"up_to": None, "price": 1}],  # no unknown keys
    ],
)
@pytest.mark.parametrize("model", ["graduated", "volume"])
def test_invalid_tiers_are_rejected(model, tiers):
    with pytest.raises(ValidationError):
        price(model, tiers=tiers)


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("per_unit", {"unit_amount": -1}),
        ("package", {"package_size": 0, "package_amount": 1}),
        ("package", {"package_size": 1, "package_amount": -1}),
        ("percentage", {"rate": "1.5"}),
        ("percentage", {"rate": "-0.1"}),
        ("percentage", {"rate": "0.1", "min_amount": 10, "max_amount": 5}),
        ("percentage", {"rate": "0.1", "fixed_amount": -1}),
        ("unknown", {}),
    ],
)
def test_invalid_prices_are_rejected(model, fields):
    with pytest.raises(ValidationError):
        price(model, **fields)


def test_prices_parse_into_their_model():
    assert isinstance(price("graduated", tiers=TYPOGRAPHIC), GraduatedPrice)
    assert isinstance(price("volume", tiers=TYPOGRAPHIC), VolumePrice)
    p = price("percentage", rate="0.029", min_amount=1, max_amount=1)  # min == max is allowed
    assert isinstance(p, PercentagePrice) and p.rate == D("0.029")


# --- docs/pricing.md ----------------------------------------------------------------------


def test_the_catalog_example_in_the_docs_is_valid():
    root = Path(__file__).resolve().parents[2]
    (block,) = re.findall(r"```yaml\n(.*?)```", (root / "docs" / "pricing.md").read_text(), flags=re.DOTALL)
    document = yaml.safe_load(block)
    schema = json.loads((root / "schemas" / "catalog.schema.json").read_text())
    assert list(Draft202012Validator(schema).iter_errors(document)) == []
    catalog = parse_catalog(document)
    pro = catalog.plan("pro")
    assert [p.model for p in pro.prices] == ["flat", "per_unit", "graduated"]
    assert amount(pro.prices[2], 1500) == D("0.5")


# --- exact at any size a usage total can have ---------------------------------------------

# Decimal(38, 9): up to 29 integer digits and 9 decimals.
STORED_QUANTITIES = st.decimals(
    min_value=0, max_value=D("99999999999999999999999999999.999999999"), places=9, allow_nan=False
)
CATALOG_AMOUNTS = st.decimals(min_value=D("0.000000001"), max_value=D(1000), places=9, allow_nan=False)


def cents_half_up(exact: Fraction) -> Decimal:
    """The oracle: ``exact`` (non-negative) to the cent, half up, in integer arithmetic."""
    cents, rest = divmod(exact * 100, 1)
    return (D(int(cents) + (rest >= Fraction(1, 2))) / 100).quantize(D("0.01"))


@settings(max_examples=300, deadline=None)
@example(quantity=D("10000000000000000004.999999999"), unit=D("0.001"))  # rounded at 28 digits, .005 -> .01
@given(quantity=STORED_QUANTITIES, unit=CATALOG_AMOUNTS)
def test_per_unit_is_rounded_once_from_the_exact_product(quantity, unit):
    priced = amount(price("per_unit", unit_amount=str(unit)), quantity)
    assert priced == Fraction(quantity) * Fraction(unit)  # exact, before the invoice rounds it
    exact = Fraction(quantity) * Fraction(unit)
    if exact < 10**25:  # what round_money can give at the cent in Decimal's default context
        assert round_money(priced, "USD") == cents_half_up(exact)


@settings(max_examples=300, deadline=None)
@example(quantity=D("10000000000000000000.000000001"), size=D(1))  # the quotient rounded: one package lost
@given(quantity=STORED_QUANTITIES, size=CATALOG_AMOUNTS)
def test_packages_are_the_exact_quotient_rounded_up(quantity, size):
    p = price("package", package_size=str(size), package_amount="1")
    assert price_usage(p, Usage(quantity)).tiers == [{"packages": str(math.ceil(Fraction(quantity) / Fraction(size)))}]


# --- the text of the detail (README, Rating: amounts at the currency's precision; quantities
# and rates exact, trailing zeros removed) ---------------------------------------------------

PLAIN = re.compile(r"^-?[0-9]+(\.[0-9]*[1-9])?$")  # no exponent, no trailing zeros
LLM_TOKENS = [{"up_to": 1000000, "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.00002", "flat_amount": "0"}]
ROLLUP = Usage(D("1500000.000000000"), 3)  # a SUM as the Decimal(38, 9) rollups return it


def test_tiers_read_as_the_invoice_reads():
    priced = price_usage(price("graduated", tiers=LLM_TOKENS), ROLLUP, "USD")
    assert priced.tiers == [
        {
            "tier": 1,
            "up_to": "1000000",
            "units": "1000000",
            "unit_amount": "0",
            "flat_amount": "0.00",
            "amount": "0.00",
        },
        {
            "tier": 2,
            "up_to": None,
            "units": "500000",
            "unit_amount": "0.00002",
            "flat_amount": "0.00",
            "amount": "10.00",
        },
    ]
    volume_priced = price_usage(price("volume", tiers=LLM_TOKENS), ROLLUP, "JPY")
    assert [(t["units"], t["flat_amount"], t["amount"]) for t in volume_priced.tiers] == [("1500000", "0", "30")]


def test_percentage_terms_read_as_the_invoice_reads():
    p = price("percentage", rate="0.0000001", fixed_amount="0.3", min_amount="0.001", max_amount="1e1")
    assert price_usage(p, ROLLUP, "USD").percentage == {
        "rate": "0.0000001",
        "value": "1500000",
        "events": 3,
        "fixed_amount": "0.30",
        "min_amount": "0.001",  # finer than the cent in the catalog: kept, not misstated as 0.00
        "max_amount": "10.00",
    }


@pytest.mark.parametrize("currency", [None, "USD", "JPY", "KWD"])
def test_the_detail_is_plain_decimal_text_and_fits_the_contract(currency):
    from bastionary.rating.contracts import PackageCount, PercentageTerms, TierCharge

    quantity = Usage(D("1234567.120000000"), 2)
    tiers = [{"up_to": "1e3", "unit_amount": "1E-7", "flat_amount": "1e1"}, {"up_to": None, "unit_amount": "0.10"}]
    priced = (lambda p, u: price_usage(p, u)) if currency is None else (lambda p, u: price_usage(p, u, currency))
    for model in ("graduated", "volume"):
        for part in priced(price(model, tiers=tiers), quantity).tiers:
            TierCharge.model_validate(part)
            assert all(PLAIN.match(part[k]) for k in ("up_to", "units", "unit_amount") if part[k] is not None)
    PackageCount.model_validate(price_usage(price("package", package_size="1e2", package_amount=1), quantity).tiers[0])
    terms = priced(price("percentage", rate="1E-7", fixed_amount="1e-2", max_amount="1e3"), quantity)
    PercentageTerms.model_validate(terms.percentage)
    assert PLAIN.match(terms.percentage["rate"]) and PLAIN.match(terms.percentage["value"])


@pytest.mark.parametrize("model", ["graduated", "volume", "percentage"])
def test_the_currency_changes_the_text_not_the_amount(model):
    fields = {"rate": "0.029", "fixed_amount": "0.30"} if model == "percentage" else {"tiers": LLM_TOKENS}
    p = price(model, **fields)
    assert price_usage(p, ROLLUP, "USD").amount == price_usage(p, ROLLUP).amount == amount(p, ROLLUP.quantity, 3)
