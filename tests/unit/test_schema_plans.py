"""``catalog.schema.json`` on ``plans`` (currencies, intervals, payment terms, minimum
commitments) and their ``prices`` (every price model, tiers) against ``parse_catalog``: the
same fields, and the same verdict on a corpus of plan catalogs and on random durations and
decimal strings (except the rules and spellings only the code knows, listed here and in the
README)."""

from __future__ import annotations

import typing
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.catalog import parse_catalog
from bastionary.entitlements.spec import EntitledPlan
from bastionary.money import MINOR_UNITS
from bastionary.rating import plans as rating_plans
from bastionary.rating.periods import Interval
from bastionary.settings import parse_iso_duration
from tests.unit.schema_helpers import (
    CATALOG_SCHEMA,
    CATALOG_VALIDATOR,
    DECIMAL_TEXT,
    DURATION_TEXT,
    HYPOTHESIS,
    MISSING,
    MONEY_VALUES,
    PLAN_SCHEMA,
    POSITIVE_VALUES,
    PRICES,
    catalog_accepted,
    field_pattern,
    negative_zero,
    plan,
    plan_catalog,
    price,
    schema_errors,
    validator,
    with_price,
)

# --- structure ------------------------------------------------------------------------

PRICE_DEFS = {
    rating_plans.FlatPrice: "flat_price",
    rating_plans.PerUnitPrice: "per_unit_price",
    rating_plans.GraduatedPrice: "tiered_price",
    rating_plans.VolumePrice: "tiered_price",
    rating_plans.PackagePrice: "package_price",
    rating_plans.PercentagePrice: "percentage_price",
}


def test_plan_properties_and_required_match_the_model():
    model = EntitledPlan  # the catalog's plan: rating's fields, then the features it grants
    assert list(PLAN_SCHEMA["properties"]) == list(model.model_fields)
    assert PLAN_SCHEMA["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and PLAN_SCHEMA["additionalProperties"] is False
    assert PLAN_SCHEMA["properties"]["key"]["pattern"] == field_pattern(model, "key")


def test_currency_enum_is_every_currency_with_a_known_minor_unit():
    assert PLAN_SCHEMA["properties"]["currency"]["enum"] == list(MINOR_UNITS)
    for currency in MINOR_UNITS:
        assert catalog_accepted({"plans": [{"key": "p", "currency": currency}]})


@pytest.mark.parametrize("model", list(PRICE_DEFS), ids=lambda m: m.__name__)
def test_price_definitions_match_the_models(model):
    schema = CATALOG_SCHEMA["$defs"][PRICE_DEFS[model]]
    assert list(schema["properties"]) == list(model.model_fields)
    assert schema["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and schema["additionalProperties"] is False
    assert CATALOG_SCHEMA["$defs"]["price_key"]["pattern"] == field_pattern(model, "key")
    tag = typing.get_args(model.model_fields["model"].annotation)[0]
    assert schema["properties"]["model"] in ({"const": tag}, {"enum": ["graduated", "volume"]})


def test_price_models_match_the_discriminator():
    tags = [typing.get_args(m.model_fields["model"].annotation)[0] for m in PRICE_DEFS]
    assert CATALOG_SCHEMA["$defs"]["price"]["properties"]["model"]["enum"] == tags
    branches = CATALOG_SCHEMA["$defs"]["price"]["allOf"]
    assert [b["if"]["properties"]["model"]["const"] for b in branches] == tags
    assert [b["then"]["$ref"] for b in branches] == [f"#/$defs/{PRICE_DEFS[m]}" for m in PRICE_DEFS]


def test_tier_matches_the_model():
    schema = CATALOG_SCHEMA["$defs"]["tier"]
    assert list(schema["properties"]) == list(rating_plans.Tier.model_fields)
    assert schema["required"] == ["up_to"] and schema["additionalProperties"] is False


# --- behaviour ------------------------------------------------------------------------

RATE_VALUES = [0, 1, 0.029, 0.5, "0", "1", "1.0", "1.", "0.029", ".5", "+0.5", "00.5", 1.01, 2, -0.1, "1.01", "2",
               "10", "-0.1", "", ".", "x", "NaN", True, None, []]  # fmt: skip
INTERVALS = ["P1M", "P3M", "P12M", "P1Y", "P1Y6M", "P2Y", "PT1M", "PT1H", "PT120S", "P7D", "P1W", "P1W2D",
             "P1DT12H", "P10D", "P0D", "PT0S", "P0W", "P0DT0H", "P", "PT", "P1", "1M", "P1M1D", "P1Y1W", "P1MT1H",
             "P1.5M", "P1.5D", "-P1M", "P-1M", "P1DT", "PT1D", "month", "", None, 1, 30]  # fmt: skip
TERMS = ["P14D", "P0D", "P30D", "PT0S", "P2W", "PT36H", "PT1.5S", "P1DT12H", "P1M", "P1Y", "P", "PT", "P1DT",
         "14", "P-1D", "", None, 14]  # fmt: skip
TIERS = [
    [{"up_to": None}],
    [{"up_to": 10, "unit_amount": 1, "flat_amount": 0}, {"up_to": 100}, {"up_to": None, "flat_amount": "2.5"}],
    [{"up_to": "10"}, {"up_to": "10.5"}, {"up_to": None}],
    [], None, {}, "tiers", [None], [1], [[]],
    [{"up_to": 10}],  # no unbounded tier
    [{"up_to": None}, {"up_to": None}],  # two
    [{"up_to": 0}, {"up_to": None}],
    [{"up_to": -5}, {"up_to": None}],
    [{"up_to": "0"}, {"up_to": None}],
    [{"up_to": "inf"}, {"up_to": None}],
    [{"up_to": True}, {"up_to": None}],
    [{"unit_amount": 1}],  # up_to is required, even null
    [{"up_to": None, "unit_amount": -1}],
    [{"up_to": None, "flat_amount": "x"}],
    [{"up_to": None, "price": 1}],
]  # fmt: skip


def plan_catalog_documents() -> list[object]:
    documents: list[object] = [plan_catalog(plan()), plan_catalog(), plan_catalog(plan(), plan(key="team"))]
    documents += [
        {"plans": [plan(prices=[price("flat")])]},
        {"plans": [plan(prices=[])]},
        {"plans": None},
        {"plans": {}},
    ]
    documents += [{"plans": [x]} for x in (None, 1, "pro", [], {}, {"key": "pro"}, {"currency": "USD"})]
    for key in [
        "pro",
        "pro-2024",
        "a",
        "p_1",
        "a-",
        "",
        "Pro",
        "1pro",
        "-pro",
        "_pro",
        "pro plan",
        "pro.x",
        "prö",
        None,
        1,
        MISSING,
    ]:
        documents.append(plan_catalog(plan(key=key)))
    for currency in ["USD", "JPY", "BHD", "usd", "XXX", "US", "USDX", "", None, 1, MISSING]:
        documents.append(plan_catalog(plan(currency=currency)))
    documents += [plan_catalog(plan(billing_interval=v)) for v in [*INTERVALS, MISSING]]
    documents += [plan_catalog(plan(payment_terms=v)) for v in [*TERMS, MISSING]]
    documents += [plan_catalog(plan(minimum_commitment=v)) for v in [*MONEY_VALUES, None, MISSING]]
    documents += [plan_catalog(plan(prices=v)) for v in [[], None, {}, "base", [None], [1], [[]], MISSING]]
    documents += [
        plan_catalog(plan(entitlements=v)) for v in [[], [{}], [{"feature": "sso"}], [1], ["sso"], None, {}, MISSING]
    ]
    documents += [
        plan_catalog(plan(id="pro")),
        plan_catalog(plan(name="Pro")),
        plan_catalog(plan(prices=[price("flat", meter="llm_tokens")])),
    ]
    for model in PRICES:
        for key in ["x", "a_1", "", "X", "1x", "a-b", "_x", None, 1, MISSING]:
            documents.append(with_price(model, key=key))
        for description in ["", "text", None, 1, MISSING]:
            documents.append(with_price(model, description=description))
        for tag in [MISSING, None, 1, "Flat", "tiered", "per-unit", "standard", ["flat"]]:
            documents.append(with_price(model, model=tag))
        documents.append(with_price(model, currency="USD"))
        if model != "flat":
            for meter_key in [MISSING, None, 1, ["llm_tokens"]]:
                documents.append(with_price(model, meter=meter_key))
            for filter_ in [{}, {"model": "small"}, {"model": 1}, {"model": None}, [], None, "model", MISSING]:
                documents.append(with_price(model, meter="llm_tokens", filter=filter_))
        else:
            documents += [with_price(model, filter={}), with_price(model, tiers=TIERS[0])]
    money_fields = {"flat": ["amount"], "per_unit": ["unit_amount"], "package": ["package_amount"],
                    "percentage": ["fixed_amount", "min_amount", "max_amount"]}  # fmt: skip
    for model, fields in money_fields.items():
        for field in fields:
            # one bound at a time: min_amount <= max_amount is checked by the code only
            others = {f: MISSING for f in ("min_amount", "max_amount") if f != field and model == "percentage"}
            documents += [with_price(model, **others, **{field: v}) for v in [*MONEY_VALUES, None, MISSING]]
    for model in ("graduated", "volume"):
        documents += [with_price(model, tiers=tiers) for tiers in [*TIERS, MISSING]]
        documents += [with_price(model, tiers=[{"up_to": v}, {"up_to": None}]) for v in POSITIVE_VALUES]
        documents += [
            with_price(model, tiers=[{"up_to": None, field: v}])
            for field in ("unit_amount", "flat_amount")
            for v in MONEY_VALUES
        ]
    documents += [with_price("package", package_size=v) for v in [*POSITIVE_VALUES, None, MISSING]]
    documents += [with_price("percentage", rate=v) for v in [*RATE_VALUES, MISSING]]
    documents += [
        with_price("percentage", min_amount=5, max_amount=5),
        with_price("percentage", min_amount=None, max_amount=0),
    ]
    return documents


PLAN_CATALOG_DOCUMENTS = plan_catalog_documents()


def test_plan_corpus_holds_both_verdicts():
    verdicts = [catalog_accepted(d) for d in PLAN_CATALOG_DOCUMENTS]
    assert sum(verdicts) > 150 and verdicts.count(False) > 250


@pytest.mark.parametrize(
    "document", PLAN_CATALOG_DOCUMENTS, ids=lambda d: repr(d.get("plans") if isinstance(d, dict) else d)[:90]
)
def test_plan_schema_agrees_with_parse_catalog(document):
    expected = catalog_accepted(document)
    errors = schema_errors(CATALOG_VALIDATOR, document)
    assert (not errors) == expected, f"parse_catalog accepts: {expected}; schema errors: {errors}"


def test_plans_is_a_section_of_its_own():
    for document in (
        {"plans": "anything"},
        {"plans": [{"id": "pro"}]},
        {"plans": [{"name": "later issues add these"}]},
    ):
        assert not catalog_accepted(document)
        assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted({"plans": [], "dunning": {"policies": []}})
    assert CATALOG_VALIDATOR.is_valid({"plans": [], "dunning": {"policies": []}})


# Differences, to be listed in the README with the others. The schema cannot relate one value
# to another, so these are checked by the code only:
PLAN_CODE_ONLY_REJECTS = {
    "duplicate plan keys": plan_catalog(plan(), plan()),
    "duplicate price keys": plan_catalog(plan(prices=[price("flat"), price("per_unit", key="base")])),
    "unknown meter": with_price("per_unit", meter="no_such_meter"),
    "empty meter": with_price("per_unit", meter=""),
    "no meters section": {"plans": [plan(prices=[price("per_unit")])]},
    "dimension not in the meter's group_by": with_price("per_unit", filter={"region": "eu"}),
    "dimension of a meter without group_by": with_price("package", filter={"model": "small"}),
    "tiers out of order": with_price("graduated", tiers=[{"up_to": 10}, {"up_to": 5}, {"up_to": None}]),
    "equal tier bounds": with_price("volume", tiers=[{"up_to": 10}, {"up_to": "10.0"}, {"up_to": None}]),
    "unbounded tier not last": with_price("graduated", tiers=[{"up_to": None}, {"up_to": 10}]),
    "min_amount > max_amount": with_price("percentage", min_amount=10, max_amount="9.99"),
    "interval rounding to zero": plan_catalog(plan(billing_interval="PT0.0000001S")),
    "interval not in whole minutes": plan_catalog(plan(billing_interval="PT90S")),
    "interval shorter than a minute": plan_catalog(plan(billing_interval="PT0.5S")),
}
# ... and the code reads numbers and durations more leniently than the schema describes them
# (Python's Decimal() and the duration parsers strip blanks and ignore case):
PLAN_CODE_ONLY_ACCEPTS = {
    "lower-case interval": plan_catalog(plan(billing_interval="p1m")),
    "blank-padded interval": plan_catalog(plan(billing_interval=" P1M ")),
    "lower-case payment terms": plan_catalog(plan(payment_terms="p30d")),
    "blank-padded amount": plan_catalog(plan(minimum_commitment=" 100 ")),
    "underscores in an amount": plan_catalog(plan(minimum_commitment="1_000")),
    "non-ASCII digits in an amount": plan_catalog(plan(minimum_commitment="١٠٠")),
    "negative zero amount": plan_catalog(plan(minimum_commitment="-0")),
    "rate with an exponent": with_price("percentage", rate="2.9e-2"),
    "negative zero rate": with_price("percentage", rate="-0"),
}


@pytest.mark.parametrize("name", list(PLAN_CODE_ONLY_REJECTS))
def test_plan_rules_only_the_code_checks(name):
    document = PLAN_CODE_ONLY_REJECTS[name]
    assert CATALOG_VALIDATOR.is_valid(document), schema_errors(CATALOG_VALIDATOR, document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("name", list(PLAN_CODE_ONLY_ACCEPTS))
def test_plan_spellings_only_the_code_accepts(name):
    document = PLAN_CODE_ONLY_ACCEPTS[name]
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)


@pytest.mark.parametrize("interval", ["P0M", "P0Y", "P00M", "P0Y0M"])
def test_zero_calendar_interval_rejected_by_both(interval):
    document = plan_catalog(plan(billing_interval=interval))
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("field", ["billing_interval", "payment_terms"])
def test_oversized_duration_is_a_catalog_error(field):
    document = plan_catalog(plan(**{field: "P9999999999D"}))
    assert not catalog_accepted(document)


def _interval_ok(text: str) -> bool:
    try:
        interval = Interval.parse(text)
    except ValueError:
        return False
    return interval.months > 0 or interval.fixed > timedelta(0)  # P0M: see test_zero_calendar_interval_rejected_by_both


def _terms_ok(text: str) -> bool:
    try:
        parse_iso_duration(text)
    except ValueError:
        return False
    return True


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_billing_intervals_agree(text):
    schema = CATALOG_SCHEMA["$defs"]["plan"]["properties"]["billing_interval"]
    assert validator(schema).is_valid(text) == _interval_ok(text)


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_payment_terms_agree(text):
    schema = CATALOG_SCHEMA["$defs"]["plan"]["properties"]["payment_terms"]
    assert validator(schema).is_valid(text) == _terms_ok(text)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_amount_strings_agree(text):
    document = plan_catalog(plan(minimum_commitment=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_tier_bounds_agree(text):
    document = with_price("graduated", tiers=[{"up_to": text}, {"up_to": None}])
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(st.text(alphabet="0125.+-", max_size=6).filter(lambda s: not negative_zero(s)))
def test_random_rate_strings_agree(text):
    document = with_price("percentage", rate=text)  # exponents are a code-only spelling for rates
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


def test_catalog_with_plans_parses():
    catalog = parse_catalog(
        plan_catalog(plan(), plan(key="team", currency="JPY", billing_interval="P1Y", minimum_commitment=None))
    )
    assert [p.key for p in catalog.plans] == ["pro", "team"]
    assert [p.model for p in catalog.plan("pro").prices] == list(PRICES)
    assert catalog.plan("team").interval == Interval(months=12)
    assert catalog.plan("pro").prices[3].tiers[0].up_to == Decimal(1_000_000)
