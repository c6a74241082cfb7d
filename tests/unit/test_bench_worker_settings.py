"""``bench --worker-setting``: what reaches the measured workers, and what is refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.settings import Settings
from bastionary.tools.bench.options import BenchError, worker_environment
from bastionary.tools.bench.processes import environment_without_settings


def test_settings_become_the_workers_variables():
    assert worker_environment([]) == {}
    assert worker_environment(["examine_processes=1", "BASTIONARY_FLUSH_INTERVAL=PT0.5S"]) == {
        "BASTIONARY_EXAMINE_PROCESSES": "1",
        "BASTIONARY_FLUSH_INTERVAL": "PT0.5S",
    }


@pytest.mark.parametrize(
    ("assignment", "reason"),
    [
        ("examine_processes", "NAME=VALUE"),
        ("=1", "NAME=VALUE"),
        ("examine_processess=1", "is not a worker setting"),
        ("data_dir=/elsewhere", "the bench sets 'data_dir'"),
        ("clickhouse_dsn=http://elsewhere:8123", "the bench sets 'clickhouse_dsn'"),
        ("examine_processes=two", "examine_processes: Input should be a valid integer"),
        ("examine_processes=65", "examine_processes: Input should be less than or equal to 64"),
        ("flush_interval=soon", "flush_interval: Value error"),
    ],
)
def test_a_setting_the_run_would_not_measure_is_refused(assignment: str, reason: str):
    with pytest.raises(BenchError, match=reason):
        worker_environment([assignment])


def test_checking_the_values_leaves_this_process_environment_as_it_was(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BASTIONARY_FLUSH_INTERVAL", "not a duration")  # the bench strips it for workers
    before = dict(os.environ)
    worker_environment(["examine_processes=2"])
    with pytest.raises(BenchError):
        worker_environment(["examine_processes=two"])
    assert dict(os.environ) == before


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.builds(
                lambda n, v: f"{n}={v}",
                st.sampled_from([*sorted(Settings.model_fields), "BASTIONARY_FLUSH_MAX_BYTES"]),
                st.text(max_size=30),
            ),
        ),
        max_size=4,
    )
)
def test_whatever_is_typed_the_answer_is_settings_or_a_clear_refusal(assignments: list[str]):
    before = dict(os.environ)
    try:
        environment = worker_environment(assignments)
    except BenchError as error:
        assert str(error)
    else:
        assert all(name.startswith("BASTIONARY_") for name in environment)
    assert dict(os.environ) == before


def test_children_get_the_environment_without_the_callers_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_DSN", "http://the-callers:8123")
    monkeypatch.setenv("BENCH_UNRELATED", "kept")
    environment = environment_without_settings()
    assert "BASTIONARY_CLICKHOUSE_DSN" not in environment
    assert environment["BENCH_UNRELATED"] == "kept"
    assert os.environ["BASTIONARY_CLICKHOUSE_DSN"] == "http://the-callers:8123"  # ours is left alone


@pytest.mark.parametrize("value", ["true", "1", "YES", "on", "t"])
def test_a_flush_process_is_read_as_the_worker_reads_it_and_needs_a_clickhouse_server(value: str):
    from click.testing import CliRunner

    from bastionary.cli.main import cli
    from bastionary.tools.bench.options import asks_flush_process

    environment = worker_environment([f"flush_process={value}"])
    assert asks_flush_process(environment) is Settings(flush_process=value).flush_process is True
    assert not asks_flush_process(worker_environment(["flush_process=false"]))
    refused = CliRunner().invoke(cli, ["bench", "--quick", "--worker-setting", f"flush_process={value}"])
    assert refused.exit_code == 2 and "needs --clickhouse-server" in refused.output


def test_a_worker_holding_chdb_is_started_without_any_flush_process():
    """The bench's chdb phase runs with the flush process off: the number of flush processes
    goes too, or the worker would refuse FLUSH_PROCESSES=2 without FLUSH_PROCESS."""
    from bastionary.tools.bench.options import _check_as_the_worker_reads, without_flush_process

    asked = worker_environment(["flush_process=true", "flush_processes=2", "examine_processes=1"])
    embedded = without_flush_process(asked)
    assert embedded == {"BASTIONARY_FLUSH_PROCESS": "false", "BASTIONARY_EXAMINE_PROCESSES": "1"}
    _check_as_the_worker_reads(embedded)
    with pytest.raises(BenchError, match="FLUSH_PROCESSES above 1 needs FLUSH_PROCESS=true"):
        worker_environment(["flush_processes=2"])
