"""Shared fixtures: a real Kafka-protocol broker and a real ClickHouse, fresh names per test.

Where they come from, in order:
- ``BASTIONARY_TEST_KAFKA_BOOTSTRAP`` / ``BASTIONARY_TEST_CLICKHOUSE_URL`` (an http(s)://
  user:pass@host:port URL of a ClickHouse server): external services;
- testcontainers Kafka / ClickHouse when a Docker engine answers;
- otherwise the embedded stack: the Tansu broker, and chdb held by a
  ``bastionary serve-clickhouse`` process that workers and tests reach over HTTP.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

BIN = Path(sys.executable).parent / "bastionary"

# The suite shares two cores with a broker and ClickHouse (and CI with whatever else runs):
# there, drawing one input or running one example can take seconds. Speed is the benchmark's
# to measure, never a test's, so no property fails on time; a test's own @settings adds to this.
settings.register_profile("bastionary", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bastionary")


@pytest.fixture(autouse=True)
def commands_end_inside_the_test(monkeypatch):
    """A long-running command a test runs in-process ends by raising ``SystemExit``.

    Once any test has opened chdb in this process, such a command would leave through
    ``os._exit`` (``bastionary.runtime.exit_past_engine_teardown``), which ends pytest itself
    mid-run with the command's status, 0: CI run Z89 stopped 36% into the suite that way and
    passed. Subprocess tests still get the real exit.
    """
    from bastionary.cli import common

    def exit_as_system_exit(code: object) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(common, "exit_past_engine_teardown", exit_as_system_exit)


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    external = os.environ.get("BASTIONARY_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from bastionary.devstack.broker import EmbeddedBroker

    # Session-wide: one slow start on a loaded machine would fail every integration test, so it
    # gets more than the product's 15 s (the wait still ends early if the broker exits).
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker")).start(timeout=120)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def _wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear")


READER_URLS: dict[str, str] = {}  # writer URL -> a read-only user's URL, where the server has one


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory):
    """A read-write http:// URL of a ClickHouse server, without a database."""
    external = os.environ.get("BASTIONARY_TEST_CLICKHOUSE_URL")
    if external:
        yield external.rstrip("/")
        return
    if _docker_available():
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer() as server:
            host, port = server.get_container_host_ip(), server.get_exposed_port(8123)
            yield f"http://{server.username}:{server.password}@{host}:{port}"
        return
    data_dir = tmp_path_factory.mktemp("chdb-host")
    password = secrets.token_urlsafe(12)
    env = os.environ | {
        "BASTIONARY_DATA_DIR": str(data_dir),
        "BASTIONARY_QUERY_WRITER_PASSWORD": password,
        "BASTIONARY_QUERY_READER_PASSWORD": password + "r",
    }
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen([str(BIN), "serve-clickhouse"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        gateway = data_dir / "query-gateway.json"
        _wait_for_file(gateway, process)
        import json

        info = json.loads(gateway.read_text())
        writer = f"http://writer:{password}@{info['host']}:{info['port']}"
        READER_URLS[writer] = f"http://reader:{password}r@{info['host']}:{info['port']}"
        yield writer
    finally:
        process.terminate()
        process.wait(10)


class Stack:
    """One test's slice of the shared services: its own topics, group and database."""

    def __init__(self, bootstrap: str, clickhouse_url: str, tmp_path: Path):
        tag = uuid.uuid4().hex[:10]
        self.bootstrap = bootstrap
        self.prefix = f"t{tag}."
        self.database = f"test_{tag}"
        self.group = f"group-{tag}"
        self.clickhouse_url = clickhouse_url
        self.tmp_path = tmp_path
        self.workers: dict[str, subprocess.Popen] = {}
        self._client = None

    @property
    def reader_url(self) -> str | None:
        """A read-only user's DSN on this test's database, when the server has one."""
        reader = READER_URLS.get(self.clickhouse_url)
        return f"{reader}/{self.database}" if reader else None

    @property
    def usage_topic(self) -> str:
        return f"{self.prefix}usage.events"

    @property
    def dlq_topic(self) -> str:
        return f"{self.prefix}usage.dlq"

    def env(self, worker_id: str = "w1", **extra: str) -> dict[str, str]:
        from bastionary.devstack.broker import free_port

        return (
            os.environ
            | {
                "BASTIONARY_KAFKA_BOOTSTRAP": self.bootstrap,
                "BASTIONARY_CLICKHOUSE_DSN": f"{self.clickhouse_url}/{self.database}",
                "BASTIONARY_TOPIC_PREFIX": self.prefix,
                "BASTIONARY_CONSUMER_GROUP": self.group,
                "BASTIONARY_DATA_DIR": str(self.tmp_path / "data"),
                "BASTIONARY_WORKER_ID": worker_id,
                "BASTIONARY_WEB_PORT": str(free_port()),
                "BASTIONARY_KAFKA_SESSION_TIMEOUT": "PT3S",
                "BASTIONARY_FLUSH_INTERVAL": "PT0.2S",
                "BASTIONARY_LOG_FORMAT": "json",
            }
            | extra
        )

    def start_worker(self, worker_id: str = "w1", **extra: str) -> subprocess.Popen:
        log = (self.tmp_path / f"{worker_id}.log").open("ab")
        from bastionary.devstack.processes import PREEXEC

        process = subprocess.Popen(
            [str(BIN), "worker"],
            env=self.env(worker_id, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=PREEXEC,  # a worker never outlives the test run
        )
        self.workers[worker_id] = process
        return process

    def kill_worker(self, worker_id: str, sig: int = 9) -> None:
        process = self.workers.pop(worker_id)
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:  # a worker that ignores SIGTERM must not outlive the test
            process.kill()
            process.wait(10)

    def stop(self) -> None:
        for worker_id in list(self.workers):
            self.kill_worker(worker_id, 15)

    def worker_log(self, worker_id: str) -> str:
        return (self.tmp_path / f"{worker_id}.log").read_text(errors="replace")

    @property
    def client(self):
        if self._client is None:
            import clickhouse_connect

            self._client = clickhouse_connect.get_client(dsn=f"{self.clickhouse_url}/{self.database}", compress=False)
        return self._client

    def query(self, sql: str, **params):
        return self.client.query(sql, parameters=params).result_rows

    def committed(self) -> dict[int, int]:
        import asyncio

        from bastionary.kafka import committed_offsets

        return asyncio.run(committed_offsets(self.bootstrap, self.group, self.usage_topic))

    def wait_caught_up(self, end_offsets: dict[int, int], timeout: float = 120.0) -> None:
        """Wait until the group has committed every partition up to its log end.

        Commits follow the ClickHouse writes (see metering/sink.py), so this means landed.
        """
        deadline = time.monotonic() + timeout
        wanted = {p: o for p, o in end_offsets.items() if o > 0}
        committed: dict[int, int] = {}
        while time.monotonic() < deadline:
            try:
                committed = self.committed()
            except Exception:
                committed = {}
            if all(committed.get(p, 0) >= o for p, o in wanted.items()):
                return
            time.sleep(0.3)
        raise TimeoutError(f"not caught up: wanted {wanted}, committed {committed}")


@pytest.fixture
def stack(kafka_bootstrap, clickhouse_url, tmp_path):
    created = Stack(kafka_bootstrap, clickhouse_url, tmp_path)
    yield created
    created.stop()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """Figures that long tests measured (the soak's totals, memory and disk), shown every run."""
    from tests.integration import test_hostile_soak

    if test_hostile_soak.FIGURES:
        terminalreporter.section("measured")
        for line in test_hostile_soak.FIGURES:
            terminalreporter.write_line(line)
