"""``bastionary bench --stages``: each flush stage timed, over the throughput workload, exactly.

Only the shape of the result is checked, never a figure: timings on a shared CI machine say
nothing about the pipeline. Over HTTP (the production path) in this process; the command
itself, with chdb, in a child process (chdb holds one directory per process).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.storage.client import Client, open_client
from bastionary.tools.bench.stages import STAGES, render_stages, run_stages

pytestmark = [pytest.mark.integration]

BIN = Path(sys.executable).parent / "bastionary"
LIMITS = RecordLimits(1_000_000, 1_000, timedelta(minutes=5))


@pytest.fixture
def client(clickhouse_url: str) -> Iterator[Client]:
    database = f"stages_{secrets.token_hex(4)}"
    opened = open_client(clickhouse_url, database, create=True)
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS `{database}`")
    opened.close()


def test_every_stage_is_timed_and_the_flushes_land_exactly(client: Client, tmp_path: Path) -> None:
    dedupe = RocksDedupeStore(tmp_path / "dedupe", 2 * 86_400)
    try:
        result = run_stages(client, dedupe, events=3_000, flush_bytes=200_000, limits=LIMITS)
    finally:
        dedupe.close()

    assert result["exactness"]["exact"] is True, json.dumps(result["exactness"], indent=2)
    assert result["events"] == 3_300  # 3,000 events and 10% repeats, as the throughput phase sends them
    assert result["exactness"]["duplicates_dropped"] == 300
    assert result["flushes"] > 1 and result["rollup_rows"] > 0 and result["dead_letters"] == 0
    assert list(result["us_per_event"]) == list(STAGES)
    assert all(value > 0 for value in result["us_per_event"].values())
    assert result["total_us_per_event"] == pytest.approx(sum(result["us_per_event"].values()), abs=0.1)
    assert list(result["cpu_us_per_event"]) == list(STAGES)
    assert all(value >= 0 for value in result["cpu_us_per_event"].values())
    assert result["total_cpu_us_per_event"] == pytest.approx(sum(result["cpu_us_per_event"].values()), abs=0.1)
    assert result["budget_us_per_event"] == 10.0

    text = render_stages(result | {"clickhouse": "a server over HTTP"}, as_json=False)
    assert all(stage in text for stage in STAGES) and "exact: True" in text and "CPU us" in text
    assert json.loads(render_stages(result, as_json=True)) == result


def test_the_command_times_the_stages_with_chdb_in_its_own_process(tmp_path: Path) -> None:
    output, errors = tmp_path / "stages.json", tmp_path / "stages.err"
    with output.open("wb") as out, errors.open("wb") as err:
        finished = subprocess.run(
            [str(BIN), "bench", "--stages", "--events", "2000", "--json"],
            stdout=out,
            stderr=err,
            cwd=tmp_path,
            timeout=300,
        )
    assert finished.returncode == 0, errors.read_text()[-3000:]
    result = json.loads(output.read_text())
    assert result["clickhouse"] == "chdb in this process"
    assert result["exactness"]["exact"] is True and result["events"] == 2_200
    assert set(result["us_per_event"]) == set(STAGES)


def test_the_command_times_the_stages_against_a_server_it_is_given(clickhouse_url: str, tmp_path: Path) -> None:
    finished = subprocess.run(
        [str(BIN), "bench", "--stages", "--events", "2000", "--json", "--clickhouse-url", clickhouse_url],
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    result = json.loads(finished.stdout)
    assert result["clickhouse"] == "a server over http, compression lz4"  # CLICKHOUSE_COMPRESSION's default
    assert result["exactness"]["exact"] is True and result["events"] == 2_200
    assert set(result["cpu_us_per_event"]) == set(STAGES)
    databases = open_client(clickhouse_url, None).query("SHOW DATABASES").result_rows
    assert not [name for (name,) in databases if name.startswith("bastionary_stages_")]  # its own, dropped


def test_a_server_is_for_the_stages_alone(tmp_path: Path) -> None:
    finished = subprocess.run(
        [str(BIN), "bench", "--rating", "--clickhouse-url", "http://localhost:1"],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert finished.returncode == 2 and b"--clickhouse-url applies to --stages" in finished.stderr


def test_a_server_that_cannot_be_reached_is_named_not_reported_as_a_bug(tmp_path: Path) -> None:
    finished = subprocess.run(
        [str(BIN), "bench", "--stages", "--events", "100", "--clickhouse-url", "http://127.0.0.1:1"],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert finished.returncode == 1
    assert b"could not be opened" in finished.stderr and b"a bug of ours" not in finished.stderr
