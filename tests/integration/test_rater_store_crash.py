"""The ClickHouse billing store killed inside ``store_invoices``: the next run rates the same
invoices onto the same rows, and nothing the crash left draws credit or counts as billed.

The scenarios run on the embedded chdb engine in a child process (chdb admits one data path
per process); ``rater_store_crash_drill.py`` describes them and prints what the tables hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

JANUARY, FEBRUARY = "c562479a-d672-5e10-b89e-a812dbe61c01", "95ecaa48-0dc3-506f-a8fb-e675b4716741"


@pytest.fixture(scope="module")
def drill(tmp_path_factory) -> dict[str, Any]:
    script = Path(__file__).with_name("rater_store_crash_drill.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path_factory.mktemp("rater-store-crash"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_control_run_bills_and_draws_what_the_seed_implies(drill):
    control = drill["control"]
    january, february = control["invoices"]
    assert (january["invoice_id"], february["invoice_id"]) == (JANUARY, FEBRUARY)
    assert [(d["subtotal"], d["credits_applied"], d["total"]) for d in control["invoices"]] == [
        ("30.00", "30.00", "0.00"),
        ("31.00", "10.00", "21.00"),  # 800 February tokens and 300 late January ones
    ]
    assert control["final"]["drawn"] == {"g-eur": "8", "g-promo": "40", "g-trial": "5"}
    credit_events = [e["event"]["data"] for e in control["events"] if e["role"] == "credits"]
    assert [(c["grant_id"], c["amount"], c["currency"]) for c in credit_events] == [
        ("g-promo", "30.00", "USD"),
        ("g-trial", "5.00", "USD"),  # at the currency's precision (9 decimals before 2026-12-07)
        ("g-promo", "10.00", "USD"),
        ("g-eur", "8.00", "EUR"),  # the grant's currency, not the invoice's
    ]


@pytest.mark.parametrize("scenario", ["crash_before_invoices", "crash_before_ledger"])
def test_a_crash_inside_store_invoices_leaves_nothing_that_counts_and_the_rerun_is_exact(drill, scenario):
    control, crashed = drill["control"], drill[scenario]
    left = crashed["after_crash"]
    # The crash left lines (and, before the invoices, movements) without their invoice rows ...
    assert left["invoices"] == [] and len(left["lines"]) == 5
    assert crashed["orphan_movements_after_crash"] == (4 if scenario == "crash_before_invoices" else 0)
    # ... that count for nothing: no credit drawn (now or as of later), nothing billed, nothing announced.
    assert (left["drawn"], left["drawn_as_of_later"], left["billed"]) == ({}, {}, [])
    assert crashed["published_before_rerun"] == 0

    # The next run rates the same invoices, onto the same rows and movement ids, announced once.
    assert crashed["rerun_invoices"] == control["invoices"]
    assert crashed["events"] == control["events"]
    assert crashed["final"] == control["final"]


def test_a_grant_arriving_between_the_crash_and_the_rerun_leaves_no_orphan_draw(drill):
    changed, control = drill["changed_after_crash"], drill["changed_control"]
    # Rated again with g-first there, January draws from g-first instead of g-promo ...
    assert changed["rerun_invoices"] == control["invoices"]
    assert [d["credit_allocations"] for d in changed["rerun_invoices"]] == [
        [{"grant_id": "g-first", "amount": "30.00", "funding": "promotional"}],
        [{"grant_id": "g-promo", "amount": "31.00", "funding": "promotional"}],
    ]
    assert changed["events"] == control["events"]
    # ... and the interrupted attempt's 30.00 from g-promo on January is zeroed, not drawn.
    orphan = [m for m in changed["final"]["movements"] if m[2] == "g-promo" and m[5] == JANUARY]
    assert [m[3] for m in orphan] == ["0"]
    assert (
        changed["final"]["drawn"]
        == control["final"]["drawn"]
        == {
            "g-eur": "8",
            "g-first": "30",
            "g-promo": "31",
            "g-trial": "5",
        }
    )
    nonzero = [m for m in changed["final"]["movements"] if m[3] != "0"]
    assert nonzero == control["final"]["movements"]
    assert changed["final"]["lines"] == control["final"]["lines"]
    assert changed["final"]["billed"] == control["final"]["billed"]


def test_lines_an_interrupted_store_left_beyond_the_rerated_invoice_are_zeroed(drill):
    fewer = drill["fewer_lines"]
    assert len(fewer["after_crash"]["lines"]) == 3 and fewer["after_crash"]["billed"] == []
    (document,) = fewer["final"]["invoices"]
    assert len(document["lines"]) == 2
    assert fewer["line_rows"] == 3 and fewer["line_sum"] == "30"  # the third row now bills nothing
    assert fewer["final"]["lines"][2][2:5] == ["", "0", "0"]
    assert ["2024-01-01 00:00:00+00:00", "pro:tokens", "1000", "10", None, None] in fewer["final"]["billed"]
    assert fewer["final"]["drawn"] == {"g-promo": "30"}
