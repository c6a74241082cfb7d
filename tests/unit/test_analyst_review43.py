"""What analysts and operators read back from the usage tables: the dedupe keys a worker
re-reads from ``usage_events`` (judged in whole seconds, as its cache judges them), the records
``bastionary produce`` keys by customer, and values inside the arrays, tuples and maps of a
``bastionary sql`` answer."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import ClassVar

import orjson
import pytest
from click.testing import CliRunner

from bastionary.cli.main import cli
from bastionary.storage.reports import jsonable

_SIGHTINGS = """
import json, sys
from datetime import UTC, datetime, timedelta
from bastionary.metering.ports import EventRow
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore

store = ClickHouseUsageStore(open_client("chdb://" + sys.argv[1], "t", create=True))
store.migrate()
second = datetime(2024, 5, 1, tzinfo=UTC)
def row(event_id, at, offset):
    return EventRow(event_id, "//s", "t", "c", at, "{}", "00" * 16, at, "usage", 1, 0, offset, 0)
store.insert_events([
    row("edge", second + timedelta(milliseconds=200), 0),  # second 0
    row("gone", second - timedelta(milliseconds=1), 1),  # second -1: past the horizon
    row("newest", second + timedelta(seconds=10, milliseconds=500), 2),  # second 10
], "t1")
print(json.dumps(sorted(r.event_id for r in store.sightings_after("usage", 0, None, timedelta(seconds=10)))))
"""


def test_a_refilled_cache_gets_every_key_its_horizon_holds_in_whole_seconds(tmp_path):
    """The cache keeps a key seen at second 0 while the partition's newest is second 10 with a
    10 s horizon, and a repeat at second 10 is a duplicate; the refill must read that key
    back, whatever milliseconds the two broker times had (chdb in a child process)."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGHTINGS, str(tmp_path / "ch")], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["edge", "newest"]


class _Producer:
    """Records what ``produce`` sends, with the key the real producer would give it."""

    sent: ClassVar[list[tuple[bytes | None, object]]] = []

    def __init__(self, bootstrap: str, linger_ms: int = 10) -> None:
        pass

    async def __aenter__(self) -> _Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def send(self, topic: str, payload: object, key: bytes | None = None, headers: object = None) -> None:
        from bastionary.kafka import subject_key

        self.sent.append((subject_key(payload), payload))

    async def flush(self) -> None:
        pass


@pytest.fixture
def producer(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.upper().startswith("BASTIONARY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BASTIONARY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BASTIONARY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setattr("bastionary.kafka.UsageProducer", _Producer)
    monkeypatch.setattr(_Producer, "sent", [])
    return _Producer


def _event(event_id: str, subject: str) -> bytes:
    event = {"specversion": "1.0", "id": event_id, "source": "s", "type": "t", "subject": subject}
    return orjson.dumps(event | {"time": "2024-05-01T00:00:00Z", "data": {}}) + b"\n"


def test_produce_batches_each_customers_events_under_its_own_key(producer):
    """A batch is keyed by its first event: a neighbour of another customer in it would go to
    that customer's partition, where dedupe never meets the copies sent under its own key."""
    lines = b"".join(_event(str(n), subject) for n, subject in enumerate(["alice", "bob", "alice", "bob", "carol"]))
    result = CliRunner().invoke(cli, ["produce", "--events-per-record", "2"], input=lines)
    assert result.exit_code == 0, result.output
    assert "published 5 events in 3 records" in result.output
    batches = [(key, [(e["subject"], e["id"]) for e in payload]) for key, payload in producer.sent]
    assert sorted(batches) == [
        (b"alice", [("alice", "0"), ("alice", "2")]),
        (b"bob", [("bob", "1"), ("bob", "3")]),
        (b"carol", [("carol", "4")]),
    ]


def test_produce_holds_a_bounded_number_of_events_for_their_batches(producer, monkeypatch):
    monkeypatch.setattr("bastionary.cli.usage.HELD_EVENTS_LIMIT", 3)
    subjects = ["alice", "bob", "carol", "alice", "dave"]
    lines = b"".join(_event(str(n), subject) for n, subject in enumerate(subjects))
    result = CliRunner().invoke(cli, ["produce", "--events-per-record", "5"], input=lines)
    assert result.exit_code == 0, result.output
    batches = [(key, [e["id"] for e in payload]) for key, payload in producer.sent]
    # The third event held sends the three batches; the rest go at the end.
    assert batches == [(b"alice", ["0"]), (b"bob", ["1"]), (b"carol", ["2"]), (b"alice", ["3"]), (b"dave", ["4"])]


def test_values_inside_arrays_tuples_and_maps_are_reported_as_outside_them():
    naive_utc = datetime(2024, 5, 1, 10, 0, 0, 500000)  # how chdb returns a DateTime64 in an array
    new_york = datetime(2024, 5, 1, 6, tzinfo=timezone(timedelta(hours=-4)))
    assert jsonable([naive_utc, new_york]) == ["2024-05-01T10:00:00.500000+00:00", "2024-05-01T10:00:00+00:00"]
    # A LATEST rollup's (time, value), as `bastionary sql "SELECT max(latest) ..."` returns it.
    assert jsonable((naive_utc, Decimal("1.500000000"))) == ["2024-05-01T10:00:00.500000+00:00", "1.5"]
    assert jsonable({"a": [Decimal("2.000000000")], 1: b"x"}) == {"a": ["2"], "1": "x"}
    assert orjson.dumps(jsonable({1: "one"})) == b'{"1":"one"}'  # JSON keys are text
    assert jsonable(datetime(2024, 5, 1, tzinfo=UTC)) == "2024-05-01T00:00:00+00:00"
