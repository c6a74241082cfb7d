"""The bench's table keeps every label and note on one line, whatever widths the figures take.

Scripts and tests grep the rendered table for its labels ("Kafka engine", "+2,000 repeats
kept"), so a label folded over two lines by the table layout reads as a missing figure. The
fixture is a real ``bench --quick --json`` result from this machine.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bastionary.tools.bench import render
from bastionary.tools.bench.report import print_contention_and_machine

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bench_quick_result.json"

LABELS = (
    "bare Faust ceiling (count only)",
    "pipeline, single-event records",
    "pipeline, 100-event batch records",
    "pipeline / hand-written loop, batch",
    "reference: aiokafka getmany, count only",
    "reference: hand-written loop",
    "reference: ClickHouse Kafka engine",
    "end-to-end latency p50 / p99",
    "worker peak RSS (VmHWM), ClickHouse over HTTP",
    "worker peak RSS (VmHWM), chdb in the worker",
    "exact totals vs ground truth",
)


def _scaled(value: Any, factor: int) -> Any:
    """Every integer figure times ``factor``: wider numbers than any run has produced here."""
    if isinstance(value, dict):
        return {key: _scaled(item, factor) for key, item in value.items()}
    if isinstance(value, list):
        return [_scaled(item, factor) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value * factor
    return value


@pytest.mark.parametrize("factor", [1, 1000])
def test_every_label_and_repeat_note_stays_on_one_line(factor: int) -> None:
    result = _scaled(json.loads(FIXTURE.read_text()), factor)
    table = render(result, as_json=False)
    lines = table.splitlines()
    for label in LABELS:
        assert any(label in line for line in lines), label
    repeats = f"{2_000 * factor:,} repeats kept"
    assert any(f"single: +{repeats}" in line for line in lines)
    assert any(f"batch: +{repeats}" in line for line in lines)


def test_a_reference_that_did_not_run_shows_why_on_its_own_row() -> None:
    result = json.loads(FIXTURE.read_text())
    result["references"]["kafkaengine"] = {
        "single": {"error": "Code: 1001. the broker refused the Kafka engine's consumer group join\nsecond line"},
        "batch": {"error": "timed out"},
    }
    table = render(result, as_json=False)
    assert any(
        "reference: ClickHouse Kafka engine" in line and "did not run (single)" in line for line in table.splitlines()
    )
    assert "second line" not in table


def test_each_part_s_cores_are_printed_for_a_run_that_has_them() -> None:
    # The fixture predates the figure: a result without it renders as before.
    result = json.loads(FIXTURE.read_text())
    assert "cores by part" not in render(result, as_json=False)
    result["batch"]["cpu_by_part"] = {
        "worker": 0.085,
        "worker_children": 0.894,
        "clickhouse_server": 0.35,
        "broker": 0.089,
    }
    lines = render(result, as_json=False).splitlines()
    assert any(
        "cores by part, batch: worker 0.09, worker children 0.89, clickhouse server 0.35, broker 0.09" in line
        for line in lines
    )


@pytest.mark.parametrize("where", ["a server over HTTP (serve-clickhouse)", "chdb in the worker"])
def test_the_entitlements_table_names_where_clickhouse_ran(where: str) -> None:
    output = io.StringIO()
    result = {"options": {"clickhouse": where}, "machine": {"nproc": 2}, "contention": {}}
    print_contention_and_machine(Console(file=output, width=132), result, measured="checks")
    row = next(line for line in output.getvalue().splitlines() if "ClickHouse" in line)
    assert where in row and "rss over HTTP aside" not in row
