"""A rater killed halfway: the next run finishes the job and no invoice has two contents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_rater_killed_mid_run_never_yields_two_invoices_for_a_period(tmp_path):
    drill = Path(__file__).with_name("rater_crash_drill.py")
    out = subprocess.run(
        [sys.executable, str(drill), str(tmp_path)], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["published"]) == 60  # every period invoiced
    assert set(result["published"].values()) == {1}  # each id published with one content only
    assert result["second_run_republished"] > 0  # stored-but-unpublished ones were sent as stored
    assert result["third_run_new"] == 0  # a re-run rates nothing again
    assert result["stored"] == result["stored_published"] == 60
