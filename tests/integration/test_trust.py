"""Trust on the real broker and ClickHouse: no record stops a partition, a broker that lost its
data is noticed and the new log lands exactly, one data dir has one owner, and the worker's
web server and health answer as documented."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import clickhouse_connect
import orjson
import pytest

from bastionary.devstack.broker import free_port
from bastionary.devstack.processes import PREEXEC
from bastionary.kafka import list_topics, read_topic
from tests.conftest import BIN

from . import hostile

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout: float = 90.0, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # not ready yet: the service may be restarting
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout} s (last: {last!r})")


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric(port: int, name: str) -> float:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rpartition(" ")[2])
    return total


# --- no record stops the pipeline -------------------------------------------------------


def test_hostile_records_are_dead_lettered_with_their_class_and_good_ones_still_count(stack):
    worker = stack.start_worker(BASTIONARY_MAX_BATCH_EVENTS="20")
    records = hostile.catalogue("t1")
    hostile.publish(stack.bootstrap, stack.usage_topic, records, partition=0)
    expected_events = sum(r.events for r in records)
    wait_until(
        lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == expected_events,
        what=f"{expected_events} events landed",
    )

    letters = asyncio.run(
        read_topic(stack.bootstrap, stack.dlq_topic, idle_seconds=3, expect=sum(1 for r in records if r.expect))
    )
    classes = sorted(dict(m.headers)["error.class"].decode() for m in letters)
    assert classes == sorted(r.expect for r in records if r.expect)
    assert worker.poll() is None  # nothing it read stopped it
    counted = {row[0] for row in stack.query("SELECT event_id FROM usage_events FINAL")}
    assert counted == {f"t1-good-{n}" for n in range(len(records) // 2)} | {"t1-named"}


# --- a broker that lost its data ------------------------------------------------------------


def _run_env(data_dir: Path, web_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")}
    return (
        env
        | {
            "BASTIONARY_DATA_DIR": str(data_dir),
            "BASTIONARY_WEB_PORT": str(web_port),
            "BASTIONARY_LOG_FORMAT": "json",
            "BASTIONARY_KAFKA_SESSION_TIMEOUT": "PT3S",
            "BASTIONARY_FLUSH_INTERVAL": "PT0.2S",
            "BASTIONARY_LOG_CHECK_INTERVAL": "PT1S",
            "BASTIONARY_RATING_ENABLED": "false",
            "BASTIONARY_DUNNING_ENABLED": "false",
        }
        | extra
    )


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN), *command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=PREEXEC,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _events(tag: str, count: int, start: int = 0) -> list[hostile.Hostile]:
    return [
        hostile.Hostile(f"cust-{i % 5}".encode(), orjson.dumps(hostile.event(f"{tag}-{i}", f"cust-{i % 5}")), events=1)
        for i in range(start, start + count)
    ]


def _gateway_client(data_dir: Path):
    info = json.loads((data_dir / "query-gateway.json").read_text())
    return clickhouse_connect.get_client(
        host=info["host"],
        port=info["port"],
        username=info["reader"]["user"],
        password=info["reader"]["password"],
        database=info["database"],
    )


def _landed(data_dir: Path) -> int:
    return _gateway_client(data_dir).command("SELECT count() FROM usage_events FINAL")


def _bootstrap(data_dir: Path) -> str:
    return json.loads((data_dir / "broker.json").read_text())["bootstrap"]


def _broker_epoch(data_dir: Path) -> int:
    return int(json.loads((data_dir / "broker.json").read_text())["log_epoch"])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_run_lands_new_usage_exactly_after_its_embedded_broker_restarts(tmp_path):
    data_dir, web = tmp_path / "data", free_port()
    run = _start(["run"], _run_env(data_dir, web), tmp_path / "run.log")
    try:
        wait_until(lambda: (data_dir / "query-gateway.json").exists(), what="the gateway")
        hostile.publish(_bootstrap(data_dir), "usage.events", _events("before", 200))
        wait_until(lambda: _landed(data_dir) == 200, what="200 events landed")

        (broker_pid,) = [p for p in _children(run.pid) if b"broker" in Path(f"/proc/{p}/cmdline").read_bytes()]
        epoch_before = _broker_epoch(data_dir)
        os.kill(broker_pid, signal.SIGKILL)  # in-memory: it comes back empty, offsets from 0
        # `run` rewrites broker.json with a new log epoch only once the new broker answers and
        # its topics exist; until then the file still names the dead one.
        wait_until(
            lambda: _broker_epoch(data_dir) != epoch_before and http_get(f"http://127.0.0.1:{web}/healthz")[0] == 200,
            what="the broker restarted and announced",
        )
        # Fewer new records than were landed before: offsets the old log had already passed.
        hostile.publish(_bootstrap(data_dir), "usage.events", _events("after", 150) + _events("before", 20))
        wait_until(lambda: _landed(data_dir) == 350, what="350 events landed")
        time.sleep(2)  # nothing more arrives: no double count, no late landing
        assert _landed(data_dir) == 350
        assert run.poll() is None
        assert metric(web, "bastionary_usage_log_resets_total") >= 1
    finally:
        _stop(run)


@pytest.mark.slow
def test_run_lands_new_usage_after_a_separately_started_broker_restarts(tmp_path):
    broker_dir, data_dir, web, port = tmp_path / "broker", tmp_path / "data", free_port(), free_port()
    broker_env = _run_env(broker_dir, 0)
    broker = _start(["broker", "--port", str(port)], broker_env, tmp_path / "broker.log")
    run = None
    try:
        wait_until(lambda: (broker_dir / "broker.json").exists(), what="the broker")
        bootstrap = f"127.0.0.1:{port}"
        run = _start(["run"], _run_env(data_dir, web, BASTIONARY_KAFKA_BOOTSTRAP=bootstrap), tmp_path / "run.log")
        wait_until(lambda: (data_dir / "query-gateway.json").exists(), what="the gateway")
        hostile.publish(bootstrap, "usage.events", _events("first", 120))
        wait_until(lambda: _landed(data_dir) == 120, what="120 landed")

        epoch_before = _broker_epoch(broker_dir)
        _stop(broker)
        wait_until(lambda: http_get(f"http://127.0.0.1:{web}/healthz")[0] == 503, what="/healthz failing")
        broker = _start(["broker", "--port", str(port)], broker_env, tmp_path / "broker.log")
        # broker.json gets the new epoch once the broker answers and its topics exist.
        wait_until(lambda: _broker_epoch(broker_dir) != epoch_before, what="the new broker announced")
        wait_until(lambda: http_get(f"http://127.0.0.1:{web}/healthz")[0] == 200, what="/healthz ok again")
        hostile.publish(bootstrap, "usage.events", _events("second", 60))
        wait_until(lambda: _landed(data_dir) == 180, what="180 landed")
        assert run.poll() is None
    finally:
        if run is not None:
            _stop(run)
        _stop(broker)


@pytest.mark.slow
def test_a_usage_topic_deleted_and_created_again_lands_its_new_records(stack):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    stack.start_worker()
    hostile.publish(stack.bootstrap, stack.usage_topic, _events("old", 100))
    wait_until(lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 100, what="100 landed")

    async def recreate() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([stack.usage_topic])
            for _poll in range(300):  # up to 30 s for the delete to take effect
                if stack.usage_topic not in await list_topics(stack.bootstrap):
                    break
                await asyncio.sleep(0.1)
            # The worker's metadata refresh may have created it again already (brokers that
            # auto-create topics do): then it is the new, empty log this test wants anyway.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(stack.usage_topic, 4, 1)])
        finally:
            await admin.close()

    asyncio.run(recreate())
    hostile.publish(stack.bootstrap, stack.usage_topic, _events("new", 40) + _events("old", 10))  # 10 repeats
    wait_until(lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 140, what="140 landed")
    time.sleep(2)
    assert stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 140


# --- one data dir, one owner; the web server as configured --------------------------------


@pytest.mark.slow
def test_a_second_run_on_the_same_data_dir_exits_naming_the_owner(tmp_path):
    data_dir, web = tmp_path / "data", free_port()
    first = _start(["run"], _run_env(data_dir, web), tmp_path / "first.log")
    try:
        wait_until(lambda: (data_dir / "query-gateway.json").exists(), what="the first run")
        broker_file = (data_dir / "broker.json").read_text()
        second = subprocess.run(
            [str(BIN), "run"],
            env=_run_env(data_dir, free_port()),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 1
        assert second.stderr.count("\n") == 1 and f"pid {first.pid}" in second.stderr, second.stderr
        assert (data_dir / "broker.json").read_text() == broker_file  # untouched
        produce = subprocess.run(
            [str(BIN), "produce", "-"],
            env=_run_env(data_dir, 0),
            capture_output=True,
            text=True,
            timeout=60,
            input=orjson.dumps(hostile.event("p-1")).decode() + "\n",
        )
        assert produce.returncode == 0, produce.stderr
        wait_until(lambda: _landed(data_dir) == 1, what="the produced event")
        assert first.poll() is None
    finally:
        _stop(first)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port``, from /proc/net/tcp (IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_the_web_server_binds_the_configured_host_and_health_reports_partitions(stack):
    env = stack.env("w1")
    port = int(env["BASTIONARY_WEB_PORT"])
    stack.start_worker("w1", BASTIONARY_WEB_PORT=str(port), BASTIONARY_WEB_HOST="127.0.0.1")
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="/healthz ok")
    assert _listening_addresses(port) == {"127.0.0.1"}
    hostile.publish(stack.bootstrap, stack.usage_topic, _events("h", 20))
    status, body = http_get(f"http://127.0.0.1:{port}/healthz")
    report = json.loads(body)
    assert status == 200 and report["status"] == "ok" and report["problems"] == []
    assert report["worker_id"] == "w1"


# --- bounded state; configuration that checks what it names --------------------------------


def test_the_worker_purges_dedupe_entries_past_a_short_horizon_on_its_schedule(stack):
    env = stack.env("w1")
    port = int(env["BASTIONARY_WEB_PORT"])
    stack.start_worker(
        "w1", BASTIONARY_WEB_PORT=str(port), BASTIONARY_DEDUPE_HORIZON="PT2S", BASTIONARY_DEDUPE_PURGE_INTERVAL="PT1S"
    )
    for round_no in range(3):
        hostile.publish(stack.bootstrap, stack.usage_topic, _events(f"r{round_no}", 300))
        wait_until(
            lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 300 * (round_no + 1),
            what="the round landed",
        )
    # The horizon runs on broker time: an id expires once its partition has landed a record
    # more than 2 s newer. Later usage keeps arriving (a tick per poll, same keys, so every
    # partition moves on), and the schedule then drops all 900 ids of the three rounds.
    ticks = itertools.count()

    def purged_after_a_tick() -> bool:
        hostile.publish(stack.bootstrap, stack.usage_topic, _events(f"tick{next(ticks)}", 5))
        return metric(port, "bastionary_dedupe_keys_purged_total") >= 900

    wait_until(purged_after_a_tick, interval=1.0, what="900 ids purged")


def test_config_validate_exits_non_zero_unless_the_broker_and_clickhouse_answer(stack):
    def validate(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN), "config", "--validate"],
            env=stack.env("cli") | extra,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    answered = validate()
    assert answered.returncode == 0, answered.stderr
    assert "ok: broker" in answered.stderr and "ok: ClickHouse" in answered.stderr
    no_broker = validate(BASTIONARY_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert no_broker.returncode == 1 and "FAILED: broker" in no_broker.stderr
    no_clickhouse = validate(BASTIONARY_CLICKHOUSE_DSN=f"http://u:p@127.0.0.1:{free_port()}/db")
    assert no_clickhouse.returncode == 1 and "FAILED: ClickHouse does not answer" in no_clickhouse.stderr
