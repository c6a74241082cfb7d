"""What operators run and what the API answers when storage fails: review 46 of the process
commands, docker-compose.yml and the API's failure answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import click
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner
from clickhouse_connect.driver.exceptions import DatabaseError

from bastionary.cli.main import cli
from bastionary.settings import Settings
from bastionary.worker.api.failures import failures_as_json
from tests.unit.env_helpers import isolated_cli, one_error_line
from tests.unit.served_apps import served
from tests.unit.standin_admin import install_admin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    isolated_cli(monkeypatch, tmp_path / "data")


def test_topics_with_another_partition_count_than_the_setting_stop_the_worker_at_start(monkeypatch):
    # The setting shapes only topics being created, yet the worker takes it for their count when
    # it decides which worker owns a customer: over 4 where the topics had 2, about half the
    # customers were owned by no worker (never rated or dunned), without a word.
    from bastionary.cli.processes import create_topics

    created = install_admin(monkeypatch, {"usage.events": 2, "billing.subscriptions": 2})
    with pytest.raises(click.ClickException) as refused:
        create_topics(Settings(usage_partitions=4), "kafka:9092")
    message = refused.value.message
    assert "BASTIONARY_USAGE_PARTITIONS (4)" in message
    assert "usage.events and 1 more have 2" in message
    assert "billing.customers" in created  # the missing ones were created first, with the setting's count


def test_topics_with_the_settings_partition_count_start(monkeypatch):
    from bastionary.cli.processes import create_topics

    created = install_admin(monkeypatch, {"usage.events": 3})
    create_topics(Settings(usage_partitions=3), "kafka:9092")
    create_topics(Settings(usage_partitions=3), "kafka:9092")  # now every topic exists
    assert "usage.dlq" in created


async def test_a_clickhouse_too_busy_to_answer_is_503_with_retry_after_not_a_bug():
    # ClickHouse refusing a read for its load came back 500 internal_error, logged as a bug
    # with a traceback; a client retries a 503 after Retry-After, and takes a 500 for a bug.
    refusals = {
        "timeout": DatabaseError("Code: 159. DB::Exception: Timeout exceeded (TIMEOUT_EXCEEDED)", code=159),
        "busy": DatabaseError("Code: 202. Too many simultaneous queries (TOO_MANY_SIMULTANEOUS_QUERIES)", code=202),
        "memory": DatabaseError("Code: 241. Memory limit exceeded (MEMORY_LIMIT_EXCEEDED)", code=241),
        "syntax": DatabaseError("Code: 62. Syntax error (SYNTAX_ERROR)", code=62),
        "no_code": DatabaseError("The ClickHouse server returned an error"),
    }

    async def view(request: web.Request) -> web.Response:
        raise refusals[request.match_info["kind"]]

    app = web.Application(middlewares=[failures_as_json])
    app.router.add_get("/{kind}", view)
    answers = {}
    async with served(app) as base, aiohttp.ClientSession() as session:
        for kind in refusals:
            async with session.get(f"{base}/{kind}") as response:
                body = await response.json()
                answers[kind] = (response.status, body["error"]["code"], response.headers.get("Retry-After"))
    assert answers["timeout"] == answers["busy"] == answers["memory"] == (503, "unavailable", "1")
    assert answers["syntax"] == answers["no_code"] == (500, "internal_error", None)  # a wrong query is ours


@pytest.mark.parametrize("password", ["s3cret", "p@ss/w0rd", "a#b?c:d", "100%25 sure &on"])
def test_compose_gives_the_worker_its_clickhouse_password_whatever_its_characters(password):
    # The DSN took CLICKHOUSE_PASSWORD as it was: "p@ss/w0rd" named the host "ss", and a '#'
    # or '?' left a DSN without a port, refused at start.
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]

    def as_compose_passes_it(text: str) -> str:
        marker = "${CLICKHOUSE_PASSWORD:?set CLICKHOUSE_PASSWORD}"
        return text.replace(marker, password).replace("$$", "$")

    environment = {name: as_compose_passes_it(str(value)) for name, value in worker["environment"].items()}
    script = as_compose_passes_it(worker["entrypoint"][-1])
    assert script.endswith("exec bastionary worker")
    script = script.removesuffix("exec bastionary worker") + "exec printenv BASTIONARY_CLICKHOUSE_DSN"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the image's `python`
    dsn = subprocess.run(
        [*worker["entrypoint"][:-1], script],
        env={**environment, "HOSTNAME": "worker-a", "PATH": path},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parts = urlsplit(dsn)
    assert (parts.hostname, parts.port, parts.username, parts.path) == ("clickhouse", 8123, "bastionary", "/bastionary")
    assert unquote(parts.password or "") == password


@pytest.mark.parametrize("command", ["worker", "rater", "run"])
@pytest.mark.parametrize("worker_id", ["", "  ", "..", "a/b"])
def test_a_worker_id_set_empty_or_naming_another_directory_is_refused_at_start(monkeypatch, command, worker_id):
    # Set but empty (a template's unset $HOSTNAME), it was taken for unset: worker-<pid>, which
    # is worker-1 in every container. It names the worker's directories too: '..' put its
    # dedupe cache in the data dir itself, and '/' ended in an unexpected error.
    started: list[str | None] = []
    monkeypatch.setenv("BASTIONARY_WORKER_ID", worker_id)
    monkeypatch.setenv("BASTIONARY_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("BASTIONARY_WEB_PORT", "0")
    monkeypatch.setattr("bastionary.cli.processes.create_topics", lambda settings, bootstrap: None)
    monkeypatch.setattr(
        "bastionary.worker.run.run_worker", lambda settings, target, **_: started.append(settings.worker_id)
    )
    result = CliRunner().invoke(cli, [command])
    assert result.exit_code == 1, (result.output, started)
    assert one_error_line(result.output) == "Error: invalid configuration:"  # a setting: listed below it
    assert "BASTIONARY_WORKER_ID: " in result.output
    assert started == []


def test_a_worker_id_that_is_a_hostname_starts(monkeypatch):
    started: list[str | None] = []
    monkeypatch.setenv("BASTIONARY_WORKER_ID", "bastionary-worker-2.local")
    monkeypatch.setenv("BASTIONARY_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("BASTIONARY_WEB_PORT", "0")
    monkeypatch.setattr("bastionary.cli.processes.create_topics", lambda settings, bootstrap: None)
    monkeypatch.setattr(
        "bastionary.worker.run.run_worker", lambda settings, target, **_: started.append(settings.worker_id)
    )
    result = CliRunner().invoke(cli, ["worker"])
    assert result.exit_code == 0, result.output
    assert started == ["bastionary-worker-2.local"]


@pytest.mark.parametrize("held_before", [False, True])
def test_a_key_that_cannot_be_printed_leaves_the_key_file_as_it_was(tmp_path, held_before):
    # "Nothing was stored", yet a file that did not exist was left behind, empty: a worker
    # started on it took it for no keys at all, where a missing file stops the start.
    keys = tmp_path / "keys.jsonl"
    before = '{"name":"old","sha256":"' + "a" * 64 + '","scopes":["read"],"customer":null}\n'
    if held_before:
        keys.write_text(before)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bastionary.cli.main",
                "api-key",
                "new",
                "k",
                "--scope",
                "read",
                "--append",
                str(keys),
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
            timeout=60,
        )
    assert done.returncode == 1
    assert one_error_line(done.stderr.decode()).startswith("Error: cannot print the key")
    assert (keys.read_text() if keys.exists() else None) == (before if held_before else None)
