"""``schemas/README.md`` on dead letters against the code: the headers every dead letter
carries (``error.*``, ``source.*``, as the outbound and planning modules write them), and the
reasons the dunning worker dead-letters payments and responses for."""

from __future__ import annotations

import re

from tests.unit.schema_helpers import README_TEXT, ROOT, readme_section


def test_readme_lists_every_dead_letter_header():
    section = README_TEXT.split("\n## Topics\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^  \| `([\w.]+)` \|", section, flags=re.MULTILINE)
    written = "".join(
        (ROOT / "src" / "bastionary" / name).read_text() for name in ("outbound.py", "metering/planning.py")
    )
    assert documented == re.findall(r'\("((?:error|source)\.\w+)", ', written)


def test_readme_dead_letter_reasons_are_the_codes():
    raised = set()
    for module in ("dunning/events.py", "rating/events.py", "storage/dunning.py"):
        raised |= set(
            re.findall(r'InvalidBillingEvent\(\s*"(\w+)"', (ROOT / "src" / "bastionary" / module).read_text())
        )
    worker = (ROOT / "src" / "bastionary" / "worker" / "services" / "dunning.py").read_text()
    raised |= set(re.findall(r'InvalidBillingEvent\(\s*"(\w+)"', worker))
    section = readme_section("Dunning dead letters")
    payment_reasons = re.findall(r"^\| `(\w+)` \| ", section, flags=re.MULTILINE)
    assert payment_reasons == [
        "invalid_json",
        "not_cloudevent",
        "unknown_type",
        "invalid_data",
        "unknown_invoice",
        "wrong_currency",
        "customer_mismatch",
        "payment_id_conflict",
    ]
    assert set(payment_reasons) <= raised
    on_dunning_dlq = set(re.findall(r"`(\w+)`", section.split("On `dunning.dlq`", 1)[1]))
    assert on_dunning_dlq >= set(payment_reasons) - {"wrong_currency", "customer_mismatch", "payment_id_conflict"}
    # Every code the dunning code raises is documented; a subscription's and a grant's are, on billing.dlq.
    subscription_reasons = {"unknown_plan", "incompatible_plan", "customer_mismatch"}
    http_only = {"backdated_time"}  # a customer-limited key's response, refused before the topic
    assert http_only <= raised and all(f"`{code}`" in (ROOT / "README.md").read_text() for code in http_only)
    assert raised - subscription_reasons - http_only <= set(payment_reasons) | on_dunning_dlq
    billing_reasons = re.findall(r"^\| `(\w+)` \| ", readme_section("Billing dead letters"), flags=re.MULTILINE)
    assert subscription_reasons <= set(billing_reasons) and subscription_reasons <= raised
    assert "promise_too_far" in raised and "promise_too_far" in on_dunning_dlq
    written = (ROOT / "src" / "bastionary" / "outbound.py").read_text()  # every dead letter's headers
    documented = re.findall(r"^\| `((?:error|source)\.\w+)` \|", section, flags=re.MULTILINE)
    assert documented == [h for h in re.findall(r'\("((?:error|source)\.\w+)", ', written) if h != "source.index"]


def test_the_readme_names_the_bad_records_the_demo_sends():
    from bastionary.tools.workload import BAD_KINDS

    readme = (ROOT / "README.md").read_text()
    start = readme.index("`make demo` starts")
    intro = readme[start : readme.index("\n\n", start)]
    named = [kind for kind in BAD_KINDS if f"`{kind}`" in intro]
    assert named == list(BAD_KINDS)
    assert "seven bad records" in intro and len(BAD_KINDS) == 7
