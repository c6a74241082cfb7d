"""The flush process (``BASTIONARY_FLUSH_PROCESS``): a real spawned child, a journaling store.

What is checked: a flush lands there as it lands in the worker; a failing step raises in
the worker and leaves the child serving; a dead child fails the step in progress with
FlushProcessDied (the worker then stops and its restart replays, see test_flush_sigkill);
a plan the sink dropped is never written; the child ends with its worker's pipe."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta

import pytest

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.flush_process import FlushProcess, FlushProcessDied, FlushProcessFailed, FlushProcessSpec
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.readings import MeterIndex
from bastionary.metering.sink import SinkConfig, UsageSink
from tests.unit.flush_process_engines import FAILING_PARTITION, OpenJournaled, journal, open_nothing
from tests.unit.sink_fakes import FakeLog, FakeStore
from tests.unit.test_sink import CATALOG, event_record

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


async def land(engine, batch) -> tuple[list, list]:
    log = FakeLog()
    log.hold(batch)
    letters: list = []

    async def send(more):
        letters.extend(more)

    sink = UsageSink(engine, send, SinkConfig("w1", 1), log)
    heard: list = []
    sink.listeners.append(heard.extend)
    for record in batch:
        await sink.admit(record)
    landed = await sink.flush()
    return [r.offset for r in landed], heard


def test_a_flush_lands_in_the_flush_process_as_it_lands_in_the_worker(tmp_path, flush_process):
    batch = records(repeat_of=2) + [event_record(6, "bad", tokens=-1)]
    batch[-1].value = b"{not json"
    landed, heard = asyncio.run(land(flush_process, batch))

    store = FakeStore()
    dedupe = RocksDedupeStore(tmp_path / "local-dedupe", int(HORIZON.total_seconds()))
    local = LocalFlushEngine(store, dedupe, MeterIndex(CATALOG.meters), LIMITS, HORIZON)
    landed_here, heard_here = asyncio.run(land(local, batch))
    dedupe.close()

    assert landed == landed_here == list(range(7))
    assert [(f.first_offset, f.last_offset, f.rollup_rows) for f in heard] == [
        (f.first_offset, f.last_offset, f.rollup_rows) for f in heard_here
    ]
    written = journal(tmp_path)
    assert [(table, count) for table, _, count in written] == [("markers", 1), ("events", 5), ("rollups", 1)]
    assert written[1][1] in store.events and len(store.events[written[1][1]]) == 5


def test_the_worker_gets_no_event_rows_back(flush_process):
    request = ("usage.events", 0, 1, records(), False)
    (plan,) = flush_process.plan([request])
    assert (plan.first_offset, plan.last_offset, plan.stats.accepted) == (0, 4, 5)
    assert plan.event_rows == [] and plan.sightings == [] and plan.records == []
    assert plan.rollup_rows and plan.last_fingerprint == records()[-1].fingerprint


def test_a_failing_step_raises_in_the_worker_and_the_child_serves_on(tmp_path, flush_process):
    failing = ("usage.events", FAILING_PARTITION, 1, records(FAILING_PARTITION), False)
    plans = flush_process.plan([failing])
    with pytest.raises(FlushProcessFailed, match="ClickHouse refused"):
        flush_process.write(plans)
    plans = flush_process.plan([("usage.events", 0, 1, records(), False)])
    flush_process.write(plans)
    assert [t for table, t, _ in journal(tmp_path) if table == "events"] == ["usage.events/0@1/0-4/events"]


def test_a_plan_the_sink_dropped_is_never_written(tmp_path, flush_process):
    dropped = flush_process.plan([("usage.events", 1, 1, records(1), False)])
    kept = flush_process.plan([("usage.events", 2, 1, records(2), False)])
    with pytest.raises(FlushProcessFailed, match="KeyError"):
        flush_process.write(dropped)
    assert journal(tmp_path) == []
    flush_process.write(kept)
    assert {t.split("@")[0] for _, t, _ in journal(tmp_path)} == {"usage.events/2"}


def test_a_dead_flush_process_fails_the_step_in_progress(flush_process):
    os.kill(flush_process.pid, signal.SIGKILL)
    with pytest.raises(FlushProcessDied, match="exit code -9"):
        flush_process.plan([("usage.events", 0, 1, records(), False)])
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
