"""`bastionary demo` (what `make demo` runs) works from a clean data dir and ends exact."""

from __future__ import annotations

import os
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
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exact: every meter total equals the ground truth" in done.stdout
    assert "dead-lettered (usage.dlq)" in done.stdout
