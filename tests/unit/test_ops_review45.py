"""What operators run and configure: review 45 of the settings, `config` and the process commands."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastionary.cli.main import cli
from bastionary.runtime import connect_clickhouse
from bastionary.settings import ConfigError, load_settings
from tests.unit.env_helpers import config_error, isolated_cli, one_error_line


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    isolated_cli(monkeypatch, tmp_path / "data")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_config_masks_a_clickhouse_token_carried_in_the_dsn(monkeypatch):
    # clickhouse-connect takes ?access_token= as the credential; `config` printed it whole.
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_DSN", "https://ch.example:8443/metering?secure=1&access_token=T0KEN-1")
    monkeypatch.setenv(
        "BASTIONARY_CLICKHOUSE_READER_DSN", "https://ro:pw-2@ch.example:8443/metering?access_token=T0KEN-2"
    )
    out = load_settings().redacted()
    assert out["clickhouse_dsn"] == "https://ch.example:8443/metering?secure=1&access_token=***"
    assert out["clickhouse_reader_dsn"] == "https://ro:***@ch.example:8443/metering?access_token=***"
    printed = CliRunner().invoke(cli, ["config"])
    assert printed.exit_code == 0, printed.output
    for secret in ("T0KEN-1", "T0KEN-2", "pw-2"):
        assert secret not in printed.output and secret not in json.dumps(out)


def test_a_fetch_wait_that_reaches_kafka_as_zero_milliseconds_is_refused(monkeypatch):
    # aiokafka gets whole milliseconds: PT0S or anything under PT0.001S made an idle consumer
    # fetch without pause (67% of a core against 1%), which the zero rule exists to prevent.
    for value in ("PT0S", "PT0.0004S"):
        message = config_error(monkeypatch, KAFKA_FETCH_MAX_WAIT=value)
        assert "BASTIONARY_KAFKA_FETCH_MAX_WAIT: Value error, must be at least PT0.001S" in message
    monkeypatch.setenv("BASTIONARY_KAFKA_FETCH_MAX_WAIT", "PT0.001S")
    assert load_settings().kafka_fetch_max_wait.total_seconds() == 0.001


@pytest.mark.parametrize(
    "bootstrap", ["kafka:notaport", "kafka:9092,kafka-2:x", "kafka:99999", "PLAINTEXT://kafka:9092"]
)
def test_a_bootstrap_aiokafka_cannot_read_is_a_config_error_naming_the_setting(monkeypatch, bootstrap):
    # `bastionary worker` ended in "ValueError: invalid literal for int() ... (a bug of ours)".
    assert "BASTIONARY_KAFKA_BOOTSTRAP: Value error, must be host:port" in config_error(
        monkeypatch, KAFKA_BOOTSTRAP=bootstrap
    )
    result = CliRunner().invoke(cli, ["worker"])
    assert "BASTIONARY_KAFKA_BOOTSTRAP" in result.output and "a bug of ours" not in result.output


@pytest.mark.parametrize(
    "bootstrap", ["kafka:9092", "kafka", "k1:9092, k2:9093", "[::1]:9092", "::1", "10.0.0.1:29092"]
)
def test_every_bootstrap_form_aiokafka_reads_is_accepted(bootstrap):
    assert load_settings(kafka_bootstrap=bootstrap).kafka_bootstrap == bootstrap


@pytest.mark.parametrize(
    "dsn", ["http://biller:pw-3@ch.example:port/db", "http://biller:pw-3@ch.example:99999/db", "http://"]
)
def test_a_server_dsn_with_no_host_or_a_bad_port_is_refused_without_echoing_it(monkeypatch, dsn):
    # It failed at the first connection ("Port could not be cast to integer value"), naming no
    # setting; "http://" alone connected to localhost.
    message = config_error(monkeypatch, CLICKHOUSE_DSN=dsn)
    assert "BASTIONARY_CLICKHOUSE_DSN: Value error, " in message
    assert "pw-3" not in message


def test_a_rater_whose_web_port_is_held_says_so_in_one_line(monkeypatch):
    # `worker` and `run` checked the port first; `rater` started, opened ClickHouse, joined its
    # group, and Faust's bind failure ended it with a traceback in the log.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        monkeypatch.setenv("BASTIONARY_WEB_PORT", str(holder.getsockname()[1]))
        result = CliRunner().invoke(cli, ["rater"])
    assert result.exit_code == 1
    assert "cannot listen on 127.0.0.1:" in one_error_line(result.output)
    assert "BASTIONARY_WEB_PORT" in result.output


@pytest.mark.parametrize("command", ["worker", "rater"])
def test_a_worker_started_while_clickhouse_is_away_is_told_so_not_as_a_bug(monkeypatch, tmp_path: Path, command):
    # A ClickHouse outage at start (the README's "ClickHouse down") read "OperationalError: ...
    # (a bug of ours, please report it)". Kafka is there; the worker's own start opens ClickHouse.
    monkeypatch.setenv("BASTIONARY_CLICKHOUSE_DSN", f"http://biller:pw-4@127.0.0.1:{closed_port()}/bastionary")
    monkeypatch.setenv("BASTIONARY_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("BASTIONARY_WEB_PORT", "0")
    monkeypatch.setattr("bastionary.cli.processes.create_topics", lambda settings, bootstrap: None)
    monkeypatch.setattr(
        "bastionary.worker.run.run_worker", lambda settings, target, **_: connect_clickhouse(settings, role="writer")
    )
    result = CliRunner().invoke(cli, [command])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert line.startswith("Error: ClickHouse does not answer (") and "BASTIONARY_CLICKHOUSE_DSN" in line
    assert "pw-4" not in result.output


def test_a_migration_changed_after_it_was_applied_is_one_line_with_a_next_step():
    """A database set up by another version of a migration: the worker said "a bug of ours"."""
    import click

    from bastionary.cli.common import fail_cleanly
    from bastionary.storage.migrations import apply_migrations, load_migrations

    first = load_migrations()[0]

    class AppliedElsewhere:
        def command(self, sql):
            pass

        def query(self, sql):
            return type("Result", (), {"result_rows": [(first.version, "a checksum of another file")]})()

    @fail_cleanly
    def start() -> None:
        apply_migrations(AppliedElsewhere(), [first])

    with pytest.raises(click.ClickException) as told:
        start()
    name = f"{first.version:04d}_{first.name}"
    assert told.value.message.startswith(f"migration {name} changed after it was applied")
    assert f"put its {name}.sql back" in told.value.message


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("BASTIONARY_WEB_HOST", "", "BASTIONARY_WEB_HOST"),
        ("BASTIONARY_WEB_HOST", "  ", "BASTIONARY_WEB_HOST"),
        ("BASTIONARY_CONSUMER_GROUP", "", "BASTIONARY_CONSUMER_GROUP"),
        ("BASTIONARY_WEB_URL", "worker-1:6066", "WEB_URL must be an http(s) URL"),
        ("BASTIONARY_WEB_URL", "http://", "WEB_URL must be an http(s) URL"),
    ],
)
def test_an_empty_listening_host_or_group_and_a_web_url_others_cannot_reach_are_refused(
    monkeypatch, variable, value, says
):
    """An empty WEB_HOST listened on every interface; WEB_URL was advertised as given."""
    from bastionary.settings import load_settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings()


@pytest.mark.parametrize("url", ["http://{hostname}:6066", "http://{ip}:6066", "https://worker-1.internal:6066"])
def test_a_web_url_with_placeholders_or_a_host_is_accepted(monkeypatch, url):
    from bastionary.settings import load_settings

    monkeypatch.setenv("BASTIONARY_WEB_URL", url)
    assert load_settings().web_url == url
