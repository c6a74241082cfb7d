"""``catalog.schema.json`` on the ``dunning`` section (policies, their steps, ``applies_to``,
``max_promise``) against ``parse_catalog``: the same fields, enums and patterns, the email
templates the package ships, and the same verdict on a corpus of dunning sections (except the
rules and spellings only the code knows, listed here and in the README)."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given

from bastionary.catalog import parse_catalog
from bastionary.dunning import policy as dunning_policy
from tests.unit.schema_helpers import (
    CATALOG_SCHEMA,
    CATALOG_VALIDATOR,
    DECIMAL_TEXT,
    DURATION_TEXT,
    HYPOTHESIS,
    MISSING,
    PLAN_SCHEMA,
    POSITIVE_VALUES,
    ROOT,
    STEPS,
    TEMPLATE_ORDER,
    catalog_accepted,
    dunning_catalog,
    field_pattern,
    policy,
    schema_errors,
    step,
    with_step,
)

# --- structure ------------------------------------------------------------------------

DUNNING_DEFS = {
    dunning_policy.DunningConfig: "dunning",
    dunning_policy.Policy: "dunning_policy",
    dunning_policy.Step: "dunning_step",
}


@pytest.mark.parametrize("model", list(DUNNING_DEFS), ids=lambda m: m.__name__)
def test_dunning_definitions_match_the_models(model):
    schema = CATALOG_SCHEMA["$defs"][DUNNING_DEFS[model]]
    assert list(schema["properties"]) == list(model.model_fields)
    assert schema.get("required", []) == [n for n, f in model.model_fields.items() if f.is_required()]
    assert model.model_config["extra"] == "forbid" and schema["additionalProperties"] is False
    assert CATALOG_SCHEMA["properties"]["dunning"] == {"$ref": "#/$defs/dunning"}


def test_applies_to_matches_the_model():
    applies_to, null = CATALOG_SCHEMA["$defs"]["dunning_policy"]["properties"]["applies_to"]["anyOf"]
    assert null == {"type": "null"}
    assert list(applies_to["properties"]) == list(dunning_policy.AppliesTo.model_fields)
    assert dunning_policy.AppliesTo.model_config["extra"] == "forbid" and applies_to["additionalProperties"] is False


def test_dunning_enums_and_patterns_match():
    step = CATALOG_SCHEMA["$defs"]["dunning_step"]["properties"]
    assert step["action"]["enum"] == [a.value for a in dunning_policy.Action]
    assert step["channels"]["items"]["enum"] == list(dunning_policy.CHANNELS)
    assert step["channels"]["uniqueItems"] is True
    policy = CATALOG_SCHEMA["$defs"]["dunning_policy"]["properties"]
    assert policy["key"]["pattern"] == field_pattern(dunning_policy.Policy, "key")
    assert policy["min_amount_due"]["$ref"] == "#/$defs/positive"
    assert policy["steps"]["minItems"] == 1
    # `after` is a fixed duration, spelled like payment_terms (both parsed by parse_iso_duration)
    assert step["after"]["pattern"] == PLAN_SCHEMA["properties"]["payment_terms"]["pattern"]
    # ... and so is max_promise, which must also be longer than zero (a digit 1-9 somewhere)
    positive = PLAN_SCHEMA["properties"]["payment_terms"]["pattern"].replace("^P(?!$)", "^P(?!$)(?=[^1-9]*[1-9])", 1)
    assert policy["max_promise"]["pattern"] == positive
    from bastionary.settings import format_iso_duration

    default = dunning_policy.Policy.model_fields["max_promise"].default
    assert default == dunning_policy.DEFAULT_MAX_PROMISE
    assert f"default {format_iso_duration(default)}" in policy["max_promise"]["description"]


def test_email_templates_named_in_the_schema_exist():
    from bastionary.dunning.notify.email import available_templates

    assert sorted(available_templates()) == sorted(TEMPLATE_ORDER)
    described = CATALOG_SCHEMA["$defs"]["dunning_step"]["properties"]["template"]["description"]
    assert f"{', '.join(TEMPLATE_ORDER[:-1])} or {TEMPLATE_ORDER[-1]}" in described
    assert ", ".join(TEMPLATE_ORDER) in CATALOG_SCHEMA["description"]


# --- behaviour ------------------------------------------------------------------------

MAX_PROMISES = ["P30D", "P1W", "PT1H", "PT0.5S", "P0DT1S", "P0D", "PT0S", "P0W0DT0H", "PT0.0S", "P1M", "P1Y", "P",
                "PT", "30D", "P-1D", "", None, [], {}, MISSING]  # fmt: skip
AFTERS = ["P1D", "PT5S", "P1W", "P0D", "PT0S", "P2W3D", "PT36H", "PT1.5S", "P1DT12H", "P1M", "P1Y", "P", "PT", "P1DT",
          "1D", "P-1D", "-P1D", "P1.5D", "PT1D", "", None, [], {}, ["P1D"], MISSING]  # fmt: skip


def dunning_catalog_documents() -> list[object]:
    documents: list[object] = [
        dunning_catalog(policy()),
        dunning_catalog(),
        dunning_catalog(policy(), policy(key="fallback", applies_to=MISSING)),
    ]
    documents += [
        dunning_catalog(
            policy(applies_to={"plans": ["pro"]}), policy(key="team_policy", applies_to={"plans": ["team"]})
        )
    ]
    for section in [{}, {"policies": []}, None, [], "policies", 1, {"policies": None}, {"policies": {}}, {"policies": [None]},
                    {"policies": ["standard"]}, {"policies": [[]]}, {"policy": []}, {"policies": [], "enabled": True}]:  # fmt: skip
        documents.append(dunning_catalog(section=section))
    for key in ["standard", "a", "p_1", "", "Standard", "1p", "_p", "p-1", "p.x", "p 1", None, 1, MISSING]:
        documents.append(dunning_catalog(policy(key=key)))
    for applies_to in [{"plans": ["pro"]}, {"plans": ["pro", "team"]}, {"plans": []}, {}, None, MISSING, {"plans": ["pro", "pro"]},
                       {"plans": "pro"}, {"plans": [1]}, {"plans": [None]}, {"plans": None}, {"plan": ["pro"]}, [], ["pro"], "pro", 1]:  # fmt: skip
        documents.append(dunning_catalog(policy(applies_to=applies_to)))
    documents += [dunning_catalog(policy(min_amount_due=v)) for v in [*POSITIVE_VALUES, None, MISSING]]
    documents += [dunning_catalog(policy(max_promise=v)) for v in MAX_PROMISES]
    documents += [
        dunning_catalog(policy(steps=v))
        for v in [[], None, {}, "P1D", [None], [1], [[]], [{}], STEPS[:1], STEPS[-1:], MISSING]
    ]
    documents += [dunning_catalog(policy(name="Standard")), dunning_catalog(policy(steps=[step(price=1)]))]
    documents += [with_step(after=v) for v in AFTERS]
    for action in [
        *(a.value for a in dunning_policy.Action),
        "Remind",
        "warn",
        "suspended",
        "",
        None,
        1,
        ["remind"],
        MISSING,
    ]:
        documents.append(with_step(action=action))
    for channels in [[], ["email"], ["webhook"], ["email", "webhook"], ["webhook", "email"], ["email", "email"],
                     ["sms"], ["Email"], "email", None, [None], [1], [["email"]], {}, MISSING]:  # fmt: skip
        documents.append(with_step(channels=channels))
    for template in [*TEMPLATE_ORDER, "nope", "", None, 1, [], ["friendly"], MISSING]:
        documents.append(with_step(template=template))  # webhook only: the template is not checked
    documents += [with_step(channels=["email"], template=t) for t in TEMPLATE_ORDER]
    documents += [
        with_step(action=a, channels=["email"], template=MISSING)
        for a in ("final_notice", "suspend", "mark_uncollectible")
    ]
    return documents


DUNNING_CATALOG_DOCUMENTS = dunning_catalog_documents()


def test_dunning_corpus_holds_both_verdicts():
    verdicts = [catalog_accepted(d) for d in DUNNING_CATALOG_DOCUMENTS]
    assert sum(verdicts) > 40 and verdicts.count(False) > 60


@pytest.mark.parametrize("document", DUNNING_CATALOG_DOCUMENTS, ids=lambda d: repr(d["dunning"])[:90])
def test_dunning_schema_agrees_with_parse_catalog(document):
    expected = catalog_accepted(document)
    errors = schema_errors(CATALOG_VALIDATOR, document)
    assert (not errors) == expected, f"parse_catalog accepts: {expected}; schema errors: {errors}"


# Differences, listed in the README with the others. The schema cannot relate one value to
# another, and the email templates are files of the package:
DUNNING_CODE_ONLY_REJECTS = {
    "duplicate policy keys": dunning_catalog(policy(), policy(applies_to={"plans": ["team"]})),
    "two default policies": dunning_catalog(policy(applies_to=MISSING), policy(key="fallback", applies_to=None)),
    "a plan in two policies": dunning_catalog(policy(), policy(key="other", applies_to={"plans": ["team", "pro"]})),
    "unknown plan": dunning_catalog(policy(applies_to={"plans": ["enterprise"]})),
    "steps out of order": dunning_catalog(policy(steps=[step(after="P7D"), step(after="P1D")])),
    "equal afters": dunning_catalog(policy(steps=[step(after="P1D"), step(after="PT24H")])),
    "mark_uncollectible not last": dunning_catalog(
        policy(steps=[step(action="mark_uncollectible"), step(after="P2D")])
    ),
    "unknown email template": with_step(channels=["email"], template="nope"),
    "oversized after": with_step(after="P9999999999D"),
    "oversized max_promise": dunning_catalog(policy(max_promise="P9999999999D")),
    "max_promise rounding to zero": dunning_catalog(policy(max_promise="PT0.0000001S")),
}
# ... and the code reads durations and amounts more leniently (parse_iso_duration strips
# blanks, ignores case and reads a number as seconds; Decimal() strips blanks):
DUNNING_CODE_ONLY_ACCEPTS = {
    "after in seconds": with_step(after=86400),
    "lower-case after": with_step(after="p1d"),
    "blank-padded after": with_step(after=" P1D "),
    "blank-padded min_amount_due": dunning_catalog(policy(min_amount_due=" 1 ")),
    "max_promise in seconds": dunning_catalog(policy(max_promise=86400)),
    "lower-case max_promise": dunning_catalog(policy(max_promise="p30d")),
}


@pytest.mark.parametrize("name", list(DUNNING_CODE_ONLY_REJECTS))
def test_dunning_rules_only_the_code_checks(name):
    document = DUNNING_CODE_ONLY_REJECTS[name]
    assert CATALOG_VALIDATOR.is_valid(document), schema_errors(CATALOG_VALIDATOR, document)
    assert not catalog_accepted(document)


@pytest.mark.parametrize("name", list(DUNNING_CODE_ONLY_ACCEPTS))
def test_dunning_spellings_only_the_code_accepts(name):
    document = DUNNING_CODE_ONLY_ACCEPTS[name]
    assert not CATALOG_VALIDATOR.is_valid(document)
    assert catalog_accepted(document)


def _after_ok(text: str) -> bool:
    return catalog_accepted(with_step(after=text))


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_step_afters_agree(text):
    assert CATALOG_VALIDATOR.is_valid(with_step(after=text)) == _after_ok(text)


@HYPOTHESIS
@given(DURATION_TEXT)
def test_random_max_promises_agree(text):
    document = dunning_catalog(policy(max_promise=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


@HYPOTHESIS
@given(DECIMAL_TEXT)
def test_random_min_amounts_due_agree(text):
    document = dunning_catalog(policy(min_amount_due=text))
    assert CATALOG_VALIDATOR.is_valid(document) == catalog_accepted(document)


def test_dunning_fixture_catalog_validates():
    document = yaml.safe_load((ROOT / "tests" / "fixtures" / "dunning_catalog.yaml").read_text())
    assert schema_errors(CATALOG_VALIDATOR, document) == []
    assert [p.key for p in parse_catalog(document).dunning.policies] == ["standard"]
