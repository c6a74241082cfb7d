"""A partition that changes hands (another worker, or another flush process of the same worker)
while a range of it is unfinished: every event still counts once.

Found by a review of the sharded flush (2026-12-04): each case below counted an event twice
before its fix.
- A partition released while its recovery was under way, or while a record or the log check
  waited to recover it, was recovered all the same, and landed by the old owner beside the
  new one.
- A dedupe cache was marked complete through the newest marker's range, which recovery replays
  because it may not have landed. If that cache's owner never replayed the range itself, no
  later recovery read the range's keys back, and a repeat of one of its events counted again.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.flush_shards import ShardedFlushEngine, shard_of
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import Admission
from bastionary.metering.sink import SinkConfig, UsageSink
from bastionary.worker.services.usage_intake import UsageIntake
from tests.unit.sink_fakes import FakeLog, FakeStore
from tests.unit.test_sink import CATALOG, TOPIC, event_record
from tests.unit.test_usage_intake import _App, deliver, message_of

LIMITS = RecordLimits(1 << 20, 100, timedelta(minutes=5))
HORIZON = timedelta(days=35)


class _Store(FakeStore):
    """ClickHouse that can refuse one events insert, and hold recovery's marker read until let go."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.gate: threading.Event | None = None

    def insert_events(self, rows, token):
        if self.refuse:
            self.refuse = False
            raise RuntimeError("ClickHouse refused the insert")
        super().insert_events(rows, token)

    def latest_marker(self, topic, partition):
        if self.gate is not None:
            self.gate.wait(10)
        return super().latest_marker(topic, partition)


async def _no_dead_letters(_letters) -> None:
    return None


class _Caches:
    """Dedupe caches opened for the test, closed at its end."""

    def __init__(self, root) -> None:
        self.root = root
        self.open: list[RocksDedupeStore] = []

    def engine(self, store: FakeStore, directory: str) -> LocalFlushEngine:
        cache = RocksDedupeStore(self.root / directory, int(HORIZON.total_seconds()))
        self.open.append(cache)
        return LocalFlushEngine(store, cache, MeterIndex(CATALOG.meters), LIMITS, HORIZON)

    def sink(self, store: FakeStore, log: FakeLog, worker: str, directory: str) -> UsageSink:
        return UsageSink(self.engine(store, directory), _no_dead_letters, SinkConfig(worker, 1), log)

    def sharded_sink(self, store: FakeStore, log: FakeLog, processes: int) -> UsageSink:
        # Shard 0 keeps the base directory, shard k ".shard-k", as worker/flushing.py names them.
        engines = [
            self.engine(store, "dedupe" if shard == 0 else f"dedupe.shard-{shard}") for shard in range(processes)
        ]
        return UsageSink(ShardedFlushEngine(engines), _no_dead_letters, SinkConfig("w1", 1), log)

    def close(self) -> None:
        while self.open:
            self.open.pop().close()


@pytest.fixture
def caches(tmp_path):
    opened = _Caches(tmp_path)
    yield opened
    opened.close()


def test_a_partition_released_while_it_is_recovered_is_not_landed_by_its_old_owner(caches):
    store, log = _Store(), FakeLog()
    records = [event_record(i, f"e{i}", tokens=i + 1) for i in range(5)]
    log.hold(records)
    old_owner = caches.sink(store, log, "w1", "w1")
    new_owner = caches.sink(store, log, "w2", "w2")
    app = _App()

    async def flush_once() -> None:
        await old_owner.flush()

    intake = UsageIntake(app, lambda: old_owner, 1000, 1 << 30, asyncio.Event(), flush_once)  # type: ignore[arg-type]

    async def rebalance_during_recovery() -> bool:
        gate = store.gate = threading.Event()  # a slow ClickHouse: recovery waits
        await deliver(intake, message_of(records[0], generation=1))
        waiting = asyncio.ensure_future(deliver(intake, message_of(records[1], generation=1)))
        await asyncio.sleep(0.05)
        # The rebalance: Faust suspends the flow, abandons the waiting delivery and revokes.
        app.flow_control.active = False
        waiting.cancel()
        await old_owner.release([(TOPIC, 0)])
        app.consumer_generation_id = 2
        app.flow_control.active = True
        store.gate = None
        gate.set()
        await asyncio.sleep(0.2)  # the intake's shielded catch-up ends what it held
        return (TOPIC, 0) in old_owner.status()

    async def both_flush() -> None:
        for record in records:
            await new_owner.admit(record)
        await new_owner.flush()
        await old_owner.flush()  # its timer: whatever it kept of partition 0 would land now

    kept_by_old_owner = asyncio.run(rebalance_during_recovery())
    asyncio.run(both_flush())
    assert not kept_by_old_owner
    assert sorted(row.event_id for row in store.event_rows()) == [f"e{i}" for i in range(5)]
    assert store.total() == 15


def test_an_assignment_read_before_a_rebalance_does_not_recover_a_lost_partition(caches):
    """The log check recovers the assigned partitions one after the other. A rebalance revokes
    both while partition 0's recovery waits on ClickHouse. Partition 1 was recovered all the same
    and kept. When it came back to this worker, the stale state (nothing landed) rewound the
    consumer to 0, and 0-9 landed a second time after the other worker had landed them."""
    store, log = _Store(), FakeLog()
    records = [event_record(i, f"e{i}", tokens=i + 1, partition=1) for i in range(12)]
    log.hold(records)
    old_owner = caches.sink(store, log, "w1", "w1")
    new_owner = caches.sink(store, log, "w2", "w2")

    async def scenario() -> bool:
        gate = store.gate = threading.Event()
        checking = asyncio.ensure_future(old_owner.check_logs({(TOPIC, 0), (TOPIC, 1)}))
        await asyncio.sleep(0.05)
        await old_owner.release([(TOPIC, 0), (TOPIC, 1)])
        store.gate = None
        gate.set()
        await checking
        kept = (TOPIC, 1) in old_owner.status()
        for record in records[:10]:
            await new_owner.admit(record)
        await new_owner.flush()
        await new_owner.release([(TOPIC, 1)])
        # Back to the old owner: Kafka resumes at the commit (10), and reads again from a rewind.
        admitted = [await old_owner.admit(record) for record in records[10:]]
        if Admission.STALE in admitted:
            for record in records[log.rewinds[-1][2] :]:
                await old_owner.admit(record)
        while await old_owner.flush():
            pass
        return kept

    assert not asyncio.run(scenario())
    assert store.total() == sum(range(1, 13))


def test_a_record_waiting_behind_a_recovery_is_not_admitted_after_its_release(caches):
    """The log check's recovery of partition 0 waits on ClickHouse; the partition's first record
    waits behind it; the rebalance revokes the partition. The check's recovery was void, but the
    record's then recovered the partition again, after the release, and the old owner landed
    the record beside the new owner."""
    store, log = _Store(), FakeLog()
    records = [event_record(i, f"e{i}", tokens=i + 1) for i in range(5)]
    log.hold(records)
    old_owner = caches.sink(store, log, "w1", "w1")
    new_owner = caches.sink(store, log, "w2", "w2")

    async def scenario() -> Admission:
        gate = store.gate = threading.Event()
        checking = asyncio.ensure_future(old_owner.check_logs({(TOPIC, 0)}))
        await asyncio.sleep(0.05)
        admitting = asyncio.ensure_future(old_owner.admit(records[0]))
        await asyncio.sleep(0.05)
        await old_owner.release([(TOPIC, 0)])
        store.gate = None
        gate.set()
        await checking
        admission = await admitting
        for record in records:
            await new_owner.admit(record)
        await new_owner.flush()
        await old_owner.flush()
        return admission

    assert asyncio.run(scenario()) is Admission.STALE
    assert store.total() == 15


def _with_a_repeat() -> list:
    """Offsets 0-13 of partition 0; offset 13 repeats offset 7's event (same id and payload)."""
    return [event_record(i, f"e{i}", tokens=i + 1) for i in range(13)] + [event_record(13, "e7", tokens=8)]


def test_a_cache_recovered_but_never_replaying_its_range_reads_its_keys_back_later(caches):
    """Three workers: w0's flush of 5-9 fails after its marker; w1 recovers the partition and
    loses it before the replay; w2 replays 5-9; the partition comes back to w1."""
    store, log = _Store(), FakeLog()
    records = _with_a_repeat()
    log.hold(records)

    async def scenario() -> None:
        w0 = caches.sink(store, log, "w0", "w0")
        for record in records[:5]:
            await w0.admit(record)
        await w0.flush()
        for record in records[5:10]:
            await w0.admit(record)
        store.refuse = True
        with pytest.raises(RuntimeError, match="refused"):
            await w0.flush()
        w1 = caches.sink(store, log, "w1", "w1")
        for record in records[5:8]:  # recovery, and part of the replay's range
            await w1.admit(record)
        await w1.release([(TOPIC, 0)])
        w2 = caches.sink(store, log, "w2", "w2")
        for record in records[5:13]:
            await w2.admit(record)
        while await w2.flush():
            pass
        await w2.release([(TOPIC, 0)])
        for record in records[13:]:  # back to w1, whose cache was recovered before
            await w1.admit(record)
        while await w1.flush():
            pass

    asyncio.run(scenario())
    assert sorted(row.event_id for row in store.event_rows()) == sorted(f"e{i}" for i in range(13))
    assert store.total() == sum(range(1, 14))


def test_a_shard_cache_recovered_but_never_replaying_its_range_reads_its_keys_back_later(caches):
    """One worker whose flush processes go 2 -> 3 -> 2 -> 3: partition 0 is in a different
    cache with 3 than with 2. The replay fails in the first run with 3, lands in the run with
    2, and the second run with 3 meets a repeat from the replayed range."""
    assert shard_of(TOPIC, 0, 3) != shard_of(TOPIC, 0, 2)
    store, log = _Store(), FakeLog()
    records = _with_a_repeat()
    log.hold(records)

    async def run(processes: int, delivered: list, fails: bool = False) -> None:
        sink = caches.sharded_sink(store, log, processes)
        for record in delivered:
            await sink.admit(record)
        if fails:
            store.refuse = True
            with pytest.raises(RuntimeError, match="refused"):
                await sink.flush()
        else:
            while await sink.flush():
                pass
        sink.engine.close()
        caches.close()

    async def scenario() -> None:
        await run(2, records[:5])
        await run(2, records[5:10], fails=True)
        await run(3, records[5:10], fails=True)
        await run(2, records[5:13])
        await run(3, records[13:])

    asyncio.run(scenario())
    assert sorted(row.event_id for row in store.event_rows()) == sorted(f"e{i}" for i in range(13))
    assert store.total() == sum(range(1, 14))
