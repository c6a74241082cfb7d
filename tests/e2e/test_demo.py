"""`bastionary demo` (what `make demo` runs) works from a clean data dir and ends exact, then
shows dunning (email caught by its own SMTP sink, signed webhooks, a late payer whose dunning
stops) and entitlement checks over the HTTP API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_reports_exact_totals(tmp_path):
    env = os.environ | {"BASTIONARY_DATA_DIR": str(tmp_path)}
    env.pop("BASTIONARY_KAFKA_BOOTSTRAP", None)
    bastionary = Path(sys.executable).parent / "bastionary"
    done = subprocess.run(
        [str(bastionary), "demo", "--events", "3000", "--customers", "40"],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    assert "exact: every meter total equals the ground truth" in out
    assert "dead-lettered (usage.dlq)" in out
    assert "FAILED" not in out and "MISMATCH" not in out
    # The pipeline table adds up: every event in, the subscribers' usage included, was counted
    # or dropped as a repeat, and the seven bad records were dead-lettered.
    rows = {name: int(n.replace(",", "")) for name, n in re.findall(r"│ ([a-z][^│]*?)\s+│\s+([\d,]+)\s+│", out)}
    assert rows["events in (incl. repeats)"] == rows["events counted"] + rows["duplicates dropped"], rows
    assert rows["dead-lettered (usage.dlq)"] == 7, rows

    # Dunning: every step reached the non-payers by email (caught by the demo's SMTP sink).
    assert "Dunning email caught by the demo's SMTP sink" in out
    for customer in ("cust-0001", "cust-0003", "cust-0006"):
        mails = _email_rows(out, customer)
        assert [m[1] for m in mails] == ["1 remind", "2 remind", "3 final_notice", "4 suspend"], mails
        assert [m[0] for m in mails] == ["1", "7", "14", "21"]  # days past due on the dunning clock
    # The late payer got the two reminders, paid, and nothing after.
    assert [m[1] for m in _email_rows(out, "cust-0004")] == ["1 remind", "2 remind"]
    assert re.search(r"cust-0004 pays [\d.]+ USD \(billing\.payments\) after reminder 2", out)
    assert re.search(r"cust-0004 .*paid after reminder 2: dunning stopped", out)
    assert not _email_rows(out, "cust-0002") and not _email_rows(out, "cust-0005")
    assert re.search(r"webhooks: \d+ POSTs to \S+, every signature verified \(HMAC-SHA256\), 0 rejected", out)

    # The funnel, as `bastionary dunning report` computes it.
    assert "Dunning funnel" in out
    funnel = {
        int(m[0]): (m[1], int(m[2]), int(m[3]))
        for m in re.findall(r"│\s+(\d)\s+│\s+(\w+)\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+[\d.]+%\s+│", out)
    }
    assert funnel == {1: ("remind", 4, 1), 2: ("remind", 4, 1), 3: ("final_notice", 3, 0), 4: ("suspend", 3, 0)}

    # Entitlements over the HTTP API: a hard limit flips to exhausted, a suspension takes sso away.
    assert "Entitlement checks" in out
    assert re.search(r"cust-0002 .*api_calls .*before .*yes .*0 / 100", out)
    assert re.search(r"cust-0002 .*api_calls .*after 100 API calls .*no .*100 / 100 .*exhausted", out)
    assert re.search(r"cust-0003 .*sso .*after the suspend step .*no .*suspended", out)
    assert "dunning and entitlements as expected" in out


def _email_rows(out: str, customer: str) -> list[tuple[str, str]]:
    """(day, step) of each row of the email table addressed to ``customer``."""
    return re.findall(rf"│\s+(\d+)\s+│ ap@{customer}\.example\.com\s+│[^│]*│ (\d \w+?)\s+│", out)
