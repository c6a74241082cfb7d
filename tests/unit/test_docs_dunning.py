"""``schemas/README.md`` on dunning against the code: its payment, response and notice
examples are accepted, its tables list the notice fields, event types and case states the code
uses, its catalog example parses, and the delivery defaults it quotes are the settings'."""

from __future__ import annotations

import json
import re

import orjson
import yaml

from bastionary.catalog import parse_catalog
from bastionary.dunning import dunner as dunning_dunner
from bastionary.dunning import engine as dunning_engine
from bastionary.dunning import events as dunning_events
from tests.unit.schema_helpers import (
    CATALOG_VALIDATOR,
    NOTICE_SAMPLES,
    NOTICE_SCHEMA,
    NOTICE_VALIDATOR,
    PAYMENT,
    PAYMENT_VALIDATOR,
    RESPONSE,
    RESPONSE_VALIDATOR,
    readme_blocks,
    readme_section,
    readme_table_keys,
    schema_errors,
)


def test_readme_dunning_examples_are_accepted():
    examples = [json.loads(block) for block in readme_blocks("jsonc")]
    assert {e["type"] for e in examples} >= {PAYMENT["type"], RESPONSE["type"], dunning_dunner.STEP_TYPE}
    for example in examples:
        value = orjson.dumps(example)
        if example["type"] in dunning_events.PAYMENT_TYPES:
            assert schema_errors(PAYMENT_VALIDATOR, example) == []
            dunning_events.parse_payment(value)
        elif example["type"] in dunning_events.RESPONSE_TYPES:
            assert schema_errors(RESPONSE_VALIDATOR, example) == []
            dunning_events.parse_response(value)
        else:
            assert example["type"] == dunning_dunner.STEP_TYPE
            assert schema_errors(NOTICE_VALIDATOR, example["data"]) == []
            assert orjson.loads(dunning_dunner.notice_event("notice", example["data"], "")) == example


def test_readme_notice_tables_match_the_code():
    keys = readme_table_keys("Dunning notices")
    envelope = orjson.loads(dunning_dunner.notice_event("notice", NOTICE_SAMPLES[0], ""))
    assert keys == [k for k in envelope if k not in ("specversion", "data")] + list(NOTICE_SCHEMA["properties"])


def test_readme_lists_every_dunning_type():
    for heading, types in (
        ("Payment events", dunning_events.PAYMENT_TYPES),
        ("Dunning responses", dunning_events.RESPONSE_TYPES),
    ):
        section = readme_section(heading)
        assert re.findall(r"^\| `(bastionary\.[\w.]+)` \|", section, flags=re.MULTILINE) == list(types)
        fields = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
        model = dunning_events.PaymentData if heading == "Payment events" else dunning_events.ResponseData
        assert sorted(fields) == sorted(model.model_fields)


def test_readme_states_are_the_engine_states():
    section = readme_section("Dunning policies")
    states = re.findall(r"^  \| `(\w+)` \|", section, flags=re.MULTILINE)
    assert sorted(states) == sorted([dunning_engine.OPEN, dunning_engine.PARTIALLY_PAID, dunning_engine.OVERDUE,
                                     dunning_engine.PAID, dunning_engine.UNCOLLECTIBLE, dunning_engine.VOID])  # fmt: skip


def test_readme_catalog_example_is_accepted():
    (example,) = readme_blocks("yaml")
    document = yaml.safe_load(example)
    assert schema_errors(CATALOG_VALIDATOR, document) == []
    catalog = parse_catalog(document)
    assert catalog.dunning.policy_for("pro").key == "standard" and catalog.dunning.policy_for("free") is None


def test_readme_delivery_defaults_are_the_settings():
    from bastionary.dunning.notify.email import MESSAGE_ID_DOMAIN, SmtpConfig
    from bastionary.settings import Settings, format_iso_duration

    fields = Settings.model_fields
    webhook_section, email_section = readme_section("Webhook delivery"), readme_section("Email delivery")
    for name in ("webhook_timeout", "webhook_backoff", "webhook_backoff_cap"):
        assert (
            f"`BASTIONARY_{name.upper()}`, default `{format_iso_duration(fields[name].default)}`"
            in webhook_section.replace("\n  ", " ")
        )
    assert (
        f"`BASTIONARY_WEBHOOK_MAX_ATTEMPTS` attempts in all (default {fields['webhook_max_attempts'].default})"
        in webhook_section.replace("\n  ", " ")
    )
    assert (
        f"`BASTIONARY_SMTP_MAX_ATTEMPTS` attempts (default {fields['smtp_max_attempts'].default})"
        in email_section.replace("\n  ", " ")
    )
    assert f"(base {SmtpConfig.backoff_base:g} s, cap {SmtpConfig.backoff_cap:g} s)" in email_section.replace(
        "\n  ", " "
    )
    assert f"<notice_id@{MESSAGE_ID_DOMAIN}>" in email_section
    assert f"(default `{format_iso_duration(fields['dunning_interval'].default)}`)" in readme_section(
        "Dunning policies"
    )
