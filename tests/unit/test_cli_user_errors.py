"""A user's mistake is told as one line saying what to do, never as "a bug of ours", and the
variables a message names are settings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastionary.cli.common import explain
from bastionary.cli.main import cli
from bastionary.locks import DataDirInUse
from bastionary.settings import Settings
from tests.unit.env_helpers import isolated_cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    isolated_cli(monkeypatch, tmp_path / "data")


def named_variables(text: str) -> set[str]:
    return set(re.findall(r"BASTIONARY_[A-Z_]+", text))


def test_the_missing_tables_hint_names_a_real_setting():
    hint = explain(RuntimeError("Code: 60. DB::Exception: Table bastionary.invoices does not exist. (UNKNOWN_TABLE)"))
    settings = {f"BASTIONARY_{name.upper()}" for name in Settings.model_fields}
    assert named_variables(hint) == {"BASTIONARY_CLICKHOUSE_DSN"} <= settings


def test_appending_a_key_to_a_broken_key_file_is_a_user_error(tmp_path: Path):
    keys = tmp_path / "keys.jsonl"
    keys.write_text('{"name": "old"\n')
    result = CliRunner().invoke(cli, ["api-key", "new", "k2", "--scope", "read", "--append", str(keys)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {keys}:1: not a key entry")
    assert "a bug of ours" not in result.output


def test_a_key_may_be_limited_to_any_valid_customer_id():
    customer = "c" * 256  # the longest id the routes accept
    result = CliRunner().invoke(cli, ["api-key", "new", "portal", "--scope", "read", "--customer", customer])
    assert result.exit_code == 0, result.output
    assert f'"customer":"{customer}"' in result.output


def test_serving_a_data_dir_another_process_owns_is_a_user_error(monkeypatch, tmp_path: Path):
    def owned(*args, **kwargs):
        raise DataDirInUse(f"{tmp_path} is in use: its clickhouse is owned by pid 1; stop that process")

    monkeypatch.setattr("bastionary.cli.processes.connect_clickhouse", owned)
    result = CliRunner().invoke(cli, ["serve-clickhouse"])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path} is in use: its clickhouse is owned by pid 1; stop that process\n"


def test_config_checks_the_key_file_the_worker_would_refuse(monkeypatch, tmp_path: Path):
    """`bastionary config` said the configuration was fine, and the worker then refused to
    start on the same key file."""
    keys = tmp_path / "keys.jsonl"
    keys.write_text('{"name": "old"\n')
    monkeypatch.setenv("BASTIONARY_API_KEY_FILE", str(keys))
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(f"Error: {keys}:1: not a key entry")


@pytest.mark.parametrize("url", ["http://", "https:///hooks", "http://[::1/x", "http://host:port/x"])
def test_a_webhook_url_without_a_host_is_refused_at_start(monkeypatch, url):
    monkeypatch.setenv("BASTIONARY_WEBHOOK_URL", url)
    monkeypatch.setenv("BASTIONARY_WEBHOOK_SECRET", "whsec_" + "A" * 32)
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 1 and "WEBHOOK_URL must be an http(s) URL with a host" in result.output


def test_the_debug_switch_the_error_message_names_is_accepted(monkeypatch):
    """ "a bug of ours ... BASTIONARY_DEBUG=1 shows the traceback": with it set, every command
    that reads the settings refused to start ("BASTIONARY_DEBUG: not a setting")."""
    from bastionary.cli.common import DEBUG_VARIABLE

    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0, result.output


def test_topics_the_broker_refuses_to_create_are_one_clear_error(monkeypatch):
    """aiokafka returns a CreateTopics answer's per-topic error codes and does not raise: a
    real Kafka refusing replication 3 on one broker (error 38) let the worker start as if its
    topics existed. (Tansu creates any topic, so the admin client is a stand-in.)"""
    import asyncio

    import pytest

    from bastionary import kafka
    from tests.unit.standin_admin import install_admin

    refusal = ("usage.events", 38, "Replication factor: 3 larger than available brokers: 1.")
    install_admin(monkeypatch, {}, create_errors=[refusal])
    with pytest.raises(kafka.TopicsRefused, match=r"usage.events: error 38 \(Replication factor.*REPLICATION \(3\)"):
        asyncio.run(kafka.ensure_topics("kafka:9092", ["usage.events"], 4, 3))
