"""The command line under hostile input: a key file kept readable, a funnel window that cannot
wrap, and a configuration printed without the webhook's secrets (a key never stored unless
shown: test_opsapi_review46.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bastionary.apikeys import read_key_file
from bastionary.cli.main import cli
from tests.unit.env_helpers import isolated_cli, one_error_line

WEBHOOK_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    isolated_cli(monkeypatch, tmp_path / "data")


def test_a_key_appended_to_a_file_without_a_final_newline_keeps_both_keys(tmp_path: Path):
    keys = tmp_path / "keys.jsonl"
    assert CliRunner().invoke(cli, ["api-key", "new", "first", "--scope", "read", "--append", str(keys)]).exit_code == 0
    keys.write_bytes(keys.read_bytes().rstrip(b"\n"))  # as an editor that adds no final newline leaves it

    result = CliRunner().invoke(cli, ["api-key", "new", "second", "--scope", "read", "--append", str(keys)])

    assert result.exit_code == 0, result.output
    assert [entry.name for entry in read_key_file(keys)] == ["first", "second"]


@pytest.mark.parametrize("name", ["", "n" * 129])
def test_a_key_name_the_key_file_refuses_is_one_line_naming_the_argument(name: str):
    result = CliRunner().invoke(cli, ["api-key", "new", name, "--scope", "read"])

    assert result.exit_code == 2
    assert one_error_line(result.output).startswith("Error: Invalid value for NAME: ")
    assert "pydantic" not in result.output


def test_a_funnel_window_past_what_the_query_holds_is_refused_before_querying(monkeypatch):
    def no_query(settings):
        raise AssertionError("queried with a window the query would wrap round")

    monkeypatch.setattr("bastionary.cli.dunning.reader_client", no_query)

    result = CliRunner().invoke(cli, ["dunning", "report", "--within", str(2**32 + 1)])  # read as 1 day

    assert result.exit_code == 2, result.output
    assert "--within" in one_error_line(result.output)


def test_a_century_is_still_a_funnel_window(monkeypatch):
    asked: list[int] = []

    class Store:
        def __init__(self, client: object):
            pass

        def funnel(self, within_days: int) -> list[tuple[int, str, int, int, int]]:
            asked.append(within_days)
            return [(1, "remind", 2, 1, 1)]

    monkeypatch.setattr("bastionary.cli.dunning.reader_client", lambda settings: object())
    monkeypatch.setattr("bastionary.storage.dunning.ClickHouseDunningStore", Store)

    result = CliRunner().invoke(cli, ["dunning", "report", "--within", "36500", "--format", "json"])

    assert result.exit_code == 0, result.output
    assert asked == [36500]


def test_config_prints_the_webhook_url_without_its_credentials(monkeypatch):
    monkeypatch.setenv("BASTIONARY_WEBHOOK_URL", "https://hooks:hunter2@example.com/notify?token=abc123&x=1")
    monkeypatch.setenv("BASTIONARY_WEBHOOK_SECRET", WEBHOOK_SECRET)

    result = CliRunner().invoke(cli, ["config"])

    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "abc123" not in result.output
    assert '"webhook_url": "https://hooks:***@example.com/notify?token=***&x=***"' in result.output


@pytest.mark.parametrize(
    ("args", "hint"),
    [(["set", "9999-12-31T23:59:59-05:00"], "MOMENT"), (["advance", "P999999999D"], "DURATION")],
)
def test_a_clock_moved_past_the_last_date_is_one_line_not_a_bug(tmp_path, monkeypatch, args, hint):
    from click.testing import CliRunner

    from bastionary.cli.dunning import clock

    monkeypatch.setenv("BASTIONARY_CLOCK", f"file:{tmp_path / 'clock'}")
    monkeypatch.setenv("BASTIONARY_DATA_DIR", str(tmp_path / "data"))
    assert CliRunner().invoke(clock, ["set", "2026-12-07T00:00:00Z"]).exit_code == 0
    result = CliRunner().invoke(clock, args)
    assert result.exit_code == 2 and hint in result.output and "bug" not in result.output
