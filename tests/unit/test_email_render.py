"""Dunning email templates and the message built from them."""

from __future__ import annotations

import email
from email import policy

import pytest

from bastionary.dunning.notify.email import (
    EmailContent,
    SmtpConfig,
    available_templates,
    build_message,
    render_email,
)
from tests.notices import dunning_notice

TEMPLATES = {"friendly", "firm", "final_notice", "suspend", "mark_uncollectible"}
CONFIG = SmtpConfig(host="127.0.0.1", port=2525, sender="Billing <billing@example.com>")


def make_notice(**overrides) -> dict:
    return (
        dunning_notice(["email", "webhook"], notice_id="7f1c2a9e-notice", action="remind", days_overdue=14) | overrides
    )


def test_all_templates_are_available():
    assert available_templates() == TEMPLATES


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_template_shows_the_essentials_in_both_parts(name):
    content = render_email(make_notice(template=name))
    assert content.subject
    assert "\n" not in content.subject
    for part in (content.text, content.html):
        assert "1234.50 EUR" in part
        assert "1500.00 EUR" in part
        assert "1 March 2026" in part
        assert "inv-2026-02-0042" in part
        assert "14 days" in part
        # Half-open period: ending at midnight on 1 February means it covers January.
        assert "1 January 2026 to 31 January 2026" in part
    assert content.html.lstrip().startswith("<!DOCTYPE html>")
    assert "inv-2026-02-0042" in content.subject


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("friendly", "friendly reminder"),
        ("firm", "final notice"),
        ("final_notice", "will be suspended"),
        ("suspend", "has been suspended"),
        ("mark_uncollectible", "collections"),
    ],
)
def test_each_template_says_what_happens_next(name, phrase):
    content = render_email(make_notice(template=name))
    assert phrase in content.text
    assert phrase in content.html


def test_template_defaults_to_the_action():
    assert render_email(make_notice(action="suspend")) == render_email(make_notice(template="suspend"))
    assert render_email(make_notice(action="final_notice")) == render_email(make_notice(template="final_notice"))


def test_remind_without_template_is_friendly():
    assert render_email(make_notice(action="remind")) == render_email(make_notice(template="friendly"))


def test_explicit_template_wins_over_action():
    assert render_email(make_notice(action="remind", template="firm")) == render_email(
        make_notice(action="final_notice", template="firm")
    )


def test_html_escapes_customer_data_and_text_does_not():
    content = render_email(make_notice(customer_id="<script>alert('x')</script>"))
    assert "<script>" not in content.html
    assert "&lt;script&gt;" in content.html
    assert "<script>alert('x')</script>" in content.text


def test_money_is_never_rounded_through_float():
    content = render_email(make_notice(amount_due="0.10", invoice_total="12345678901234567.01", currency="USD"))
    for part in (content.text, content.html):
        assert "0.10 USD" in part
        assert "12345678901234567.01 USD" in part


def test_amount_that_is_not_a_decimal_is_rejected():
    with pytest.raises(ValueError, match="not a decimal"):
        render_email(make_notice(amount_due="NaN"))


def test_one_day_is_singular():
    content = render_email(make_notice(days_overdue=1))
    assert "1 day overdue" in content.text


def test_company_name_is_used():
    content = render_email(make_notice(), company="Acme Cloud")
    assert "Acme Cloud billing team" in content.text
    assert "Acme Cloud billing team" in content.html


def test_unknown_template_names_the_available_ones():
    with pytest.raises(ValueError) as excinfo:
        render_email(make_notice(template="rude"))
    message = str(excinfo.value)
    assert "rude" in message
    for name in TEMPLATES:
        assert name in message


def test_shared_pieces_are_not_templates():
    with pytest.raises(ValueError):
        render_email(make_notice(template="_base"))


def test_missing_field_fails_loudly():
    notice = make_notice()
    del notice["due_at"]
    with pytest.raises(KeyError):
        render_email(notice)


def test_message_is_multipart_alternative_with_ids():
    notice = make_notice()
    content = render_email(notice)
    message = build_message(CONFIG, notice, content)
    parsed = email.message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["Message-ID"] == "<7f1c2a9e-notice@bastionary.notices>"
    assert parsed["To"] == "ap@acme.example"
    assert parsed["From"] == "Billing <billing@example.com>"
    assert parsed["Subject"] == content.subject
    assert parsed["X-Bastionary-Notice-Id"] == "7f1c2a9e-notice"
    assert parsed["X-Bastionary-Invoice-Id"] == "inv-2026-02-0042"
    assert parsed.get_body(("plain",)).get_content() == content.text
    assert parsed.get_body(("html",)).get_content() == content.html


def test_message_id_is_deterministic():
    notice = make_notice()
    first = build_message(CONFIG, notice, render_email(notice))
    second = build_message(CONFIG, dict(notice), render_email(dict(notice)))
    assert first["Message-ID"] == second["Message-ID"]


def test_notice_id_unfit_for_a_message_id_is_rejected():
    notice = make_notice(notice_id="a b@c")
    with pytest.raises(ValueError, match="Message-ID"):
        build_message(CONFIG, notice, EmailContent("s", "t", "<p>h</p>"))


def test_no_recipient_means_no_to_header():
    notice = make_notice(recipient_email=None)
    assert build_message(CONFIG, notice, render_email(notice))["To"] is None
