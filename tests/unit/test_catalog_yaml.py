"""Reading the catalog's YAML: a key given twice is refused, and every number is exact.

YAML itself lets a later key replace an earlier one (a second ``amount:`` reprices a plan,
a second ``meters:`` drops the first), and reads ``0.12345678901234567891`` as a binary float.
"""

from __future__ import annotations

import json
import string
import tempfile
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.catalog import CatalogError, load_catalog

PLAN = """
meters:
  - {key: api_requests, event_type: api.request, aggregation: COUNT}
plans:
  - key: starter
    currency: USD
    billing_interval: P1M
    payment_terms: P14D
    prices:
      - %s
"""


def load_text(text: str):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "catalog.yaml"
        path.write_text(text, encoding="utf-8")
        return load_catalog(path)


def unit_amount(literal: str) -> Decimal:
    [price] = (
        load_text(PLAN % f"{{key: api, meter: api_requests, model: per_unit, unit_amount: {literal}}}").plans[0].prices
    )
    return price.unit_amount


def refusal(text: str) -> str:
    with pytest.raises(CatalogError) as info:
        load_text(text)
    return str(info.value)


# --- duplicate keys ----------------------------------------------------------------------


def test_a_price_given_twice_an_amount_is_refused():
    message = refusal(PLAN % '{key: base, model: flat, amount: "19.00", amount: "0.01"}')
    assert "is invalid" in message
    assert "line 10: duplicate key 'amount' (first on line 10)" in message


def test_a_second_meters_section_is_refused_not_merged_away():
    message = refusal(
        "meters:\n"
        "  - {key: llm_tokens, event_type: llm.completion, aggregation: SUM, value_property: $.tokens}\n"
        "plans: []\n"
        "meters:\n"
        "  - {key: api_requests, event_type: api.request, aggregation: COUNT}\n"
    )
    assert "line 4: duplicate key 'meters' (first on line 1)" in message


def test_a_merge_key_may_be_overridden():
    catalog = load_text("base: &base {a: 1, b: 2}\nderived: {<<: *base, b: 3}\n")
    assert catalog.model_extra == {"base": {"a": 1, "b": 2}, "derived": {"a": 1, "b": 3}}


KEYS = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=12),
    min_size=1,
    max_size=8,
    unique=True,
)


@given(keys=KEYS, data=st.data())
def test_any_key_given_twice_is_refused_naming_it_and_its_line(keys, data):
    twice = data.draw(st.sampled_from(keys))
    at = data.draw(st.integers(keys.index(twice) + 1, len(keys)))
    lines = [f"{json.dumps(key)}: {n}" for n, key in enumerate(keys)]
    lines.insert(at, f"{json.dumps(twice)}: again")
    nested = data.draw(st.booleans())
    text = "outer:\n" + "".join(f"  {line}\n" for line in lines) if nested else "".join(f"{line}\n" for line in lines)
    first, again = keys.index(twice) + 1 + nested, at + 1 + nested
    assert f"line {again}: duplicate key {twice!r} (first on line {first})" in refusal(text)


@given(keys=KEYS)
def test_distinct_keys_load_as_written(keys):
    keys = [f"x-{key}" for key in keys]  # never a section of the catalog, which has a shape of its own
    catalog = load_text("".join(f"{json.dumps(key)}: {n}\n" for n, key in enumerate(keys)))
    assert catalog.model_extra == {key: n for n, key in enumerate(keys)}


# --- exact numbers -----------------------------------------------------------------------

# What YAML 1.1 resolves as a float: digits, a point, digits, an optional signed exponent.
FLOAT_LITERALS = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}.{fraction}{exponent}",
    st.sampled_from(["", "+", "-"]),
    st.from_regex(r"[0-9]{1,30}", fullmatch=True),
    st.from_regex(r"[0-9]{0,40}", fullmatch=True),
    st.one_of(st.just(""), st.from_regex(r"[eE][-+][0-9]{1,3}", fullmatch=True)),
)


@given(literal=FLOAT_LITERALS)
def test_any_decimal_literal_is_read_exactly(literal):
    value = load_text(f"x: {literal}\n").model_extra["x"]
    assert isinstance(value, Decimal)
    assert str(value) == str(Decimal(literal))  # the same digits and exponent, not merely equal


@given(literal=FLOAT_LITERALS.filter(lambda text: not text.startswith("-")))
def test_any_price_is_the_decimal_written(literal):
    assert str(unit_amount(literal)) == str(Decimal(literal))


def test_twenty_fractional_digits_survive():
    assert unit_amount("0.12345678901234567891") == Decimal("0.12345678901234567891")


@pytest.mark.parametrize(
    ("literal", "expected"),
    [("1_000.000_1", "1000.0001"), (".5", "0.5"), ("1:30.5", "90.5"), ("-1:00:00.25", "-3600.25"), ("0.10", "0.10")],
)
def test_yaml_float_spellings(literal, expected):
    assert str(load_text(f"x: {literal}\n").model_extra["x"]) == expected


@pytest.mark.parametrize("literal", [".inf", "-.inf", ".nan"])
def test_a_price_that_is_not_finite_is_refused(literal):
    with pytest.raises(CatalogError, match="unit_amount"):
        unit_amount(literal)


def test_ratios_are_exact_and_still_valid():
    text = PLAN % '{key: base, model: flat, amount: "19.00"}' + (
        "    entitlements:\n"
        "      - {feature: api_calls, type: metered, meter: api_requests, limit: 1000.5, notify_at: [0.8, 1.0, 0.80]}\n"
    )
    [entitlement] = load_text(text).plans[0].entitlements
    assert entitlement.notify_at == [Decimal("0.8"), Decimal("1.0")]
    assert entitlement.limit == Decimal("1000.5")
    [api] = load_catalog(None).plan("starter").entitlements[:1]
    assert api.notify_at == [Decimal("0.8"), Decimal("1.0")]


def test_a_static_entitlements_config_keeps_json_numbers():
    text = PLAN % '{key: base, model: flat, amount: "19.00"}' + (
        "    entitlements:\n      - {feature: support, type: static, config: {sla_hours: 4.5, tiers: [0.5, 2], n: 3}}\n"
    )
    [support] = load_text(text).plans[0].entitlements
    assert support.config == {"sla_hours": 4.5, "tiers": [0.5, 2], "n": 3}
    assert orjson.loads(orjson.dumps(support.config)) == support.config  # handed to applications as JSON


# --- encodings ---------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_is_a_catalog_error(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"meters: []\n# caf\xe9\n")
    with pytest.raises(CatalogError, match=r"cannot read catalog .*latin1\.yaml: not UTF-8"):
        load_catalog(path)
