"""What the CLI prints: ids whole, groups as key=value, waits in words, logs without
terminal codes."""

from __future__ import annotations

from datetime import timedelta

from bastionary.cli.common import cell, emit
from bastionary.cli.dunning import in_words
from bastionary.logs import strip_terminal_codes


def test_a_table_never_cuts_an_id(capsys):
    invoice_id = "5f3c2d1e-0b9a-5c8d-9e7f-6a5b4c3d2e1f"
    emit(["invoice_id", "customer_id", "total"], [[invoice_id, "customer-with-a-long-name-" * 4, "19.00"]], "table")
    assert invoice_id in capsys.readouterr().out


def test_a_group_prints_as_key_value_pairs():
    assert cell({"model": "gpt-4", "region": "eu"}) == "model=gpt-4, region=eu"
    assert (cell(None), cell({}), cell("19.00")) == ("", "", "19.00")


def test_a_wait_reads_like_a_person_says_it():
    assert in_words(timedelta(days=6, hours=10, minutes=7, seconds=14.841936)) == "in 6 days"
    assert in_words(timedelta(hours=1)) == "in 1 hour"
    assert in_words(timedelta(minutes=90)) == "in 2 hours"
    assert in_words(timedelta(seconds=59)) == "in 59 seconds"
    assert in_words(timedelta(0)) == in_words(timedelta(days=-2)) == "now"


def test_a_log_line_keeps_the_text_without_terminal_codes():
    event = {"event": "\x1b[1;32m[^Worker]\x1b[0m: Ready", "partitions": 4}
    assert strip_terminal_codes(None, "info", event) == {"event": "[^Worker]: Ready", "partitions": 4}


def test_cells_and_headers_print_as_given_never_as_markup(capsys):
    emit(["[b]customer"], [["[acme]", 1], ["a[/]b", 2]], "table")
    out = capsys.readouterr().out
    assert "[b]customer" in out and "[acme]" in out and "a[/]b" in out
