"""``bastionary bench --api --quick`` with a ClickHouse server and a flush process: the HTTP
ingest lands exactly and the cores of every part are reported. Only the shape is checked,
never a figure against a target: timings on a shared CI machine say nothing about the API."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import BIN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_api_bench_with_a_flush_process_lands_exactly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")} | {"TMPDIR": str(tmp_path)}
    command = [str(BIN), "bench", "--api", "--quick", "--json", "--clickhouse-server"]
    run = subprocess.run(
        [*command, "--worker-setting", "flush_process=true"], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)

    assert result["options"]["worker_settings"] == {"BASTIONARY_FLUSH_PROCESS": "true"}
    assert result["options"]["clickhouse"] == "a server over HTTP (serve-clickhouse)"
    ingest = result["ingest"]
    assert ingest["exact"] is True and ingest["acknowledged_events_per_s"] > 0
    assert set(ingest["cores_used"]) == {
        "worker",
        "worker_children",
        "clickhouse_server",
        "broker",
        "poster",
        "machine",
    }
    assert result["query"]["windows_per_answer"] > 0
