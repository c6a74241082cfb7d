"""The flush process (``BASTIONARY_FLUSH_PROCESS``): a real child interpreter, a journaling store.

What is checked: a flush lands there as it lands in the worker; a failing step raises in
the worker and leaves the child serving; a dead child fails the step in progress with
FlushProcessDied (the worker then stops and its restart replays, see test_flush_sigkill);
a plan the sink dropped is never written; the child ends with its worker's pipe."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pickle
import signal
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.ingest.errors import ErrorClass
from bastionary.metering.flush_process import FlushProcess, FlushProcessDied, FlushProcessFailed, FlushProcessSpec
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord
from bastionary.metering.sink import SinkConfig, UsageSink
from bastionary.tools.bench.processes import descendants
from tests.unit.flush_process_engines import FAILING_PARTITION, OpenJournaled, journal, open_nothing
from tests.unit.sink_fakes import FakeLog, FakeStore
from tests.unit.test_sink import CATALOG, NOW_MS, event_record, hostile_records

LIMITS = RecordLimits(1 << 20, 100, timedelta(minutes=5))
HORIZON = timedelta(days=35)


def spec(tmp_path, opener=None) -> FlushProcessSpec:
    return FlushProcessSpec(opener or OpenJournaled(tmp_path, CATALOG.meters, LIMITS, HORIZON), "WARNING")


@pytest.fixture
def flush_process(tmp_path):
    process = FlushProcess(spec(tmp_path))
    yield process
    process.close()


def records(partition: int = 0, count: int = 5, *, repeat_of: int | None = None):
    made = [event_record(i, f"e{i}", tokens=i + 1, partition=partition) for i in range(count)]
    if repeat_of is not None:
        made.append(event_record(count, f"e{repeat_of}", tokens=repeat_of + 1, partition=partition))
    return made


async def land(engine, batch, rows_wanted=None) -> tuple[list, list, list]:
    log = FakeLog()
    log.hold(batch)
    letters: list = []

    async def send(more):
        letters.extend(more)

    sink = UsageSink(engine, send, SinkConfig("w1", 1), log)
    sink.rows_wanted = rows_wanted
    heard: list = []
    sink.listeners.append(heard.extend)
    for record in batch:
        await sink.admit(record)
    landed = await sink.flush()
    return [r.offset for r in landed], heard, letters


def test_a_flush_lands_in_the_flush_process_as_it_lands_in_the_worker(tmp_path, flush_process):
    batch = records(repeat_of=2) + [event_record(6, "bad", tokens=-1)]
    batch[-1].value = b"{not json"
    landed, heard, letters = asyncio.run(land(flush_process, batch))

    store = FakeStore()
    dedupe = RocksDedupeStore(tmp_path / "local-dedupe", int(HORIZON.total_seconds()))
    local = LocalFlushEngine(store, dedupe, MeterIndex(CATALOG.meters), LIMITS, HORIZON)
    landed_here, heard_here, letters_here = asyncio.run(land(local, batch))
    dedupe.close()

    assert landed == landed_here == list(range(7))
    assert [(d.value, d.headers, d.code) for d in letters] == [(d.value, d.headers, d.code) for d in letters_here]
    assert len(letters) == 1
    assert [(f.first_offset, f.last_offset, f.rollup_rows) for f in heard] == [
        (f.first_offset, f.last_offset, f.rollup_rows) for f in heard_here
    ]
    written = journal(tmp_path)
    assert [(table, count) for table, _, count in written] == [("markers", 1), ("events", 5), ("rollups", 1)]
    assert written[1][1] in store.events and len(store.events[written[1][1]]) == 5


def test_the_worker_gets_no_event_rows_back(flush_process):
    request = ("usage.events", 0, 1, records(), None)
    (plan,) = flush_process.plan([request])
    assert (plan.first_offset, plan.last_offset, plan.stats.accepted) == (0, 4, 5)
    assert plan.event_rows == [] and plan.sightings == [] and plan.records == []
    assert plan.rollup_rows and plan.last_fingerprint == records()[-1].fingerprint


def customer_records(customers: list[str]) -> list[InboundRecord]:
    made = []
    for offset, customer in enumerate(customers):
        body = json.loads(event_record(offset, f"e{offset}", tokens=offset + 1).value)
        body["subject"] = customer
        made.append(InboundRecord("usage.events", 0, offset, NOW_MS, customer.encode(), json.dumps(body).encode(), []))
    return made


def test_only_the_wanted_customers_rollup_rows_come_back_and_every_row_is_written(tmp_path, flush_process):
    batch = customer_records(["cust-0", "cust-1", "cust-2", "cust-0", "cust-1", "cust-2"])
    (plan,) = flush_process.plan([("usage.events", 0, 1, batch, None)], frozenset({"cust-1", "cust-9"}))
    assert plan.rollup_customers == {"cust-0", "cust-1", "cust-2"}
    assert plan.rows_of == {"cust-1", "cust-9"}
    assert plan.rollup_rows and {row.customer_id for row in plan.rollup_rows} == {"cust-1"}

    dedupe = RocksDedupeStore(tmp_path / "local-dedupe", int(HORIZON.total_seconds()))
    local = LocalFlushEngine(FakeStore(), dedupe, MeterIndex(CATALOG.meters), LIMITS, HORIZON)
    (everything,) = local.plan([("usage.events", 0, 1, batch, None)], frozenset({"cust-1"}))
    dedupe.close()
    assert everything.rows_of is None  # in the worker's own process every row is handed over
    assert [row for row in everything.rollup_rows if row.customer_id == "cust-1"] == plan.rollup_rows

    flush_process.write([plan])
    rollups = [count for table, _, count in journal(tmp_path) if table == "rollups"]
    assert rollups == [len(everything.rollup_rows)]


def test_the_sink_asks_for_its_listeners_rows_and_they_hear_every_customer(tmp_path, flush_process):
    batch = customer_records(["cust-0", "cust-1", "cust-2"])
    asked: list[int] = []

    def wanted() -> frozenset[str]:
        asked.append(1)
        return frozenset({"cust-2"})

    landed, heard, _ = asyncio.run(land(flush_process, batch, wanted))
    assert landed == [0, 1, 2] and len(asked) == 1
    (flush,) = heard
    assert flush.customers == {"cust-0", "cust-1", "cust-2"} and flush.rows_of == {"cust-2"}
    assert {row.customer_id for row in flush.rollup_rows} == {"cust-2"}


def test_a_failing_step_raises_in_the_worker_and_the_child_serves_on(tmp_path, flush_process):
    failing = ("usage.events", FAILING_PARTITION, 1, records(FAILING_PARTITION), None)
    plans = flush_process.plan([failing])
    with pytest.raises(FlushProcessFailed, match="ClickHouse refused"):
        flush_process.write(plans)
    plans = flush_process.plan([("usage.events", 0, 1, records(), None)])
    flush_process.write(plans)
    assert [t for table, t, _ in journal(tmp_path) if table == "events"] == ["usage.events/0@1/0-4/events"]


def test_a_plan_the_sink_dropped_is_never_written(tmp_path, flush_process):
    dropped = flush_process.plan([("usage.events", 1, 1, records(1), None)])
    kept = flush_process.plan([("usage.events", 2, 1, records(2), None)])
    with pytest.raises(FlushProcessFailed, match="KeyError"):
        flush_process.write(dropped)
    assert journal(tmp_path) == []
    flush_process.write(kept)
    assert {t.split("@")[0] for _, t, _ in journal(tmp_path)} == {"usage.events/2"}


def test_a_dead_flush_process_fails_the_step_in_progress(flush_process):
    os.kill(flush_process.pid, signal.SIGKILL)
    with pytest.raises(FlushProcessDied, match="exit code -9"):
        flush_process.plan([("usage.events", 0, 1, records(), None)])
    with pytest.raises(FlushProcessDied):
        flush_process.purge_expired()


def test_the_flush_process_ends_with_its_worker_and_storage_errors_surface_at_start(tmp_path):
    process = FlushProcess(spec(tmp_path))
    assert process.purge_expired() == 0
    pid = process.pid
    process.close()
    assert not _alive(pid)
    with pytest.raises(FlushProcessFailed, match="no storage here"):
        FlushProcess(spec(tmp_path, open_nothing))


def test_a_spec_that_does_not_pickle_fails_the_start_and_leaves_no_child(tmp_path):
    before = set(descendants(os.getpid()))
    with pytest.raises((pickle.PicklingError, AttributeError)):
        FlushProcess(FlushProcessSpec(lambda: None))  # a lambda pickles by name, and has none
    assert set(descendants(os.getpid())) == before


def _alive(pid: int | None, wait: float = 5.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid or 0, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


def test_a_worker_holding_chdb_refuses_a_flush_process(tmp_path):
    from bastionary.runtime import ClickHouseHandle
    from bastionary.settings import Settings
    from bastionary.worker.flushing import flush_engine

    settings = Settings(flush_process=True, data_dir=tmp_path)
    handle = ClickHouseHandle(client=None, in_process=True, dsn_description="chdb", reopen=None)
    with pytest.raises(SystemExit, match="BASTIONARY_FLUSH_PROCESS needs ClickHouse outside the worker"):
        flush_engine(settings, CATALOG.meters, handle, tmp_path / "dedupe")


@pytest.fixture(scope="module")
def shared_flush_process(tmp_path_factory):
    process = FlushProcess(spec(tmp_path_factory.mktemp("shared")))
    yield process
    process.close()


_partitions = itertools.count(100)  # a fresh partition per example: no state carries over


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(hostile_records)
def test_whatever_a_record_holds_it_crosses_to_the_flush_process_and_back(shared_flush_process, records):
    """The hostile records of test_sink, through the pipe: whatever they hold (lone surrogates
    in header names, nesting, any timestamp), they and their dead letters cross both ways and
    the flush lands, every record counted."""
    partition = next(_partitions)
    inbound = [
        InboundRecord("usage.events", partition, i, ts, key, value, list(hs))
        for i, (key, value, hs, ts) in enumerate(records)
    ]
    landed, heard, letters = asyncio.run(land(shared_flush_process, inbound))
    assert landed == list(range(len(records)))
    for letter in letters:  # what the DLQ producer will be handed must be encodable
        for name, value in letter.headers:
            name.encode("utf-8")
            assert value is None or isinstance(value, bytes)
        assert letter.code in ErrorClass
    (flush,) = heard
    assert (flush.partition, flush.first_offset, flush.last_offset) == (partition, 0, len(records) - 1)
