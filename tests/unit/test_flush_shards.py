"""Several flush processes sharing a worker's partitions (``BASTIONARY_FLUSH_PROCESSES``):
real spawned children, each with a journaling store and a RocksDB cache of its own.

What is checked: a flush over four partitions lands as it lands in the worker's own process,
each partition's rows and keys in its own engine and the markers in one insert; a step that
fails in one engine raises only after the others finished theirs, and both serve on; a plan
call drops the unwritten plans of every engine; a partition recovers from its own engine."""

from __future__ import annotations

import asyncio
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.metering.flush_process import FlushProcess, FlushProcessFailed, FlushProcessSpec
from bastionary.metering.flush_shards import ShardedFlushEngine, shard_of
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.readings import MeterIndex
from bastionary.settings import Settings
from bastionary.worker.flushing import shard_dedupe_path, start_flush_processes
from tests.unit.flush_process_engines import FAILING_PARTITION, OpenJournaled, journal, open_nothing
from tests.unit.sink_fakes import FakeStore
from tests.unit.test_flush_process import HORIZON, LIMITS, land, records
from tests.unit.test_sink import CATALOG, TOPIC, event_record


def opener(root: Path) -> OpenJournaled:
    return OpenJournaled(root, CATALOG.meters, LIMITS, HORIZON)


@pytest.fixture
def shards(tmp_path):
    roots = [tmp_path / f"shard-{k}" for k in range(2)]
    engine = ShardedFlushEngine(start_flush_processes([FlushProcessSpec(opener(r), "WARNING") for r in roots]))
    yield engine, roots
    engine.close()


def four_partitions() -> list:
    made = []
    for partition in range(4):
        made += [event_record(i, f"p{partition}-e{i}", tokens=i + 1, partition=partition) for i in range(5)]
        made.append(event_record(5, f"p{partition}-e2", tokens=3, partition=partition))  # a repeat
    return made


def test_a_partition_belongs_to_one_engine_whatever_process_asks():
    # crc32, not hash(): the same in every process, so a partition finds its cache again.
    assert [shard_of(TOPIC, p, 2) for p in range(4)] == [(zlib.crc32(TOPIC.encode()) + p) % 2 for p in range(4)]
    assert sorted(shard_of(TOPIC, p, 3) for p in range(6)) == [0, 0, 1, 1, 2, 2]
    assert {shard_of(TOPIC, p, 1) for p in range(8)} == {0}


def test_a_flush_over_four_partitions_lands_as_in_the_worker_each_partition_in_its_engine(tmp_path, shards):
    engine, roots = shards
    batch = four_partitions()
    landed, heard, letters = asyncio.run(land(engine, batch))

    dedupe = RocksDedupeStore(tmp_path / "local-dedupe", int(HORIZON.total_seconds()))
    local = LocalFlushEngine(FakeStore(), dedupe, MeterIndex(CATALOG.meters), LIMITS, HORIZON)
    landed_here, heard_here, letters_here = asyncio.run(land(local, batch))
    dedupe.close()

    assert sorted(landed) == sorted(landed_here) and len(landed) == len(batch)
    assert letters == letters_here == []
    assert [(f.partition, f.first_offset, f.last_offset, f.rollup_rows) for f in heard] == [
        (f.partition, f.first_offset, f.last_offset, f.rollup_rows) for f in heard_here
    ]
    for shard, root in enumerate(roots):
        written = journal(root)
        partitions = {int(token.split("/")[1].split("@")[0]) for table, token, _ in written if table != "markers"}
        assert partitions == {p for p in range(4) if shard_of(TOPIC, p, 2) == shard}
        assert [count for table, _, count in written if table == "events"] == [5] * len(partitions)
    markers = [(root, count) for root in roots for table, _, count in journal(root) if table == "markers"]
    assert markers == [(roots[0], 1)] * 4  # a line per marker, all by the first engine


def test_a_step_failing_in_one_engine_raises_after_the_other_landed_and_both_serve_on(shards):
    engine, roots = shards
    failing_shard = shard_of(TOPIC, FAILING_PARTITION, 2)
    other = next(p for p in range(4) if shard_of(TOPIC, p, 2) != failing_shard)
    plans = engine.plan(
        [(TOPIC, FAILING_PARTITION, 1, records(FAILING_PARTITION), None), (TOPIC, other, 1, records(other), None)]
    )
    assert [(p.partition, p.stats.accepted) for p in plans] == [(FAILING_PARTITION, 5), (other, 5)]
    with pytest.raises(FlushProcessFailed, match="ClickHouse refused"):
        engine.write(plans)
    assert [t for table, t, _ in journal(roots[1 - failing_shard]) if table == "events"] == [
        f"{TOPIC}/{other}@1/0-4/events"
    ]
    assert [table for table, _, _ in journal(roots[failing_shard])] == []

    plans = engine.plan([(TOPIC, other, 1, records(other), None)])  # the replay after a restart
    engine.write(plans)
    assert engine.purge_expired() == 0


def test_a_plan_call_drops_every_engines_unwritten_plans(shards):
    engine, roots = shards
    dropped = engine.plan([(TOPIC, p, 1, records(p), None) for p in range(4)])
    engine.plan([(TOPIC, 0, 1, records(0), None)])
    with pytest.raises(FlushProcessFailed, match="KeyError"):
        engine.write(dropped)
    assert journal(roots[0]) == journal(roots[1]) == []


def test_a_partition_recovers_from_its_own_engine(shards):
    engine, _ = shards
    plans = engine.plan([(TOPIC, p, 1, records(p), None) for p in range(4)])
    engine.insert_markers([plan.marker("w1", datetime.now(UTC)) for plan in plans])
    engine.write(plans)
    # The journaling store keeps each engine's markers in memory: only the first engine wrote
    # them, so only partitions of the first engine find theirs. What matters is that each
    # recover ran in the partition's engine, where its dedupe cache is.
    found = {p: engine.recover(TOPIC, p) for p in range(4)}
    assert {p for p, marker in found.items() if marker is not None} == {
        p for p in range(4) if shard_of(TOPIC, p, 2) == 0
    }


def test_when_one_flush_process_cannot_start_the_others_are_closed(tmp_path):
    specs = [FlushProcessSpec(opener(tmp_path / "a"), "WARNING"), FlushProcessSpec(open_nothing, "WARNING")]
    with pytest.raises(FlushProcessFailed, match="no storage here"):
        start_flush_processes(specs)
    # The first one's cache is closed: RocksDB opens it again here.
    RocksDedupeStore(tmp_path / "a" / "dedupe", 60).close()


def test_each_shard_has_its_own_dedupe_directory_and_the_first_keeps_a_single_process_cache(tmp_path):
    base = tmp_path / "dedupe" / "w1"
    assert [shard_dedupe_path(base, k) for k in range(3)] == [
        base,
        base.with_name("w1.shard-1"),
        base.with_name("w1.shard-2"),
    ]


def test_several_flush_processes_need_the_flush_process(tmp_path):
    with pytest.raises(ValueError, match="FLUSH_PROCESSES above 1 needs FLUSH_PROCESS=true"):
        Settings(flush_processes=2, data_dir=tmp_path)
    assert Settings(flush_process=True, flush_processes=2, data_dir=tmp_path).flush_processes == 2


def test_a_single_engine_is_a_sharded_engine_of_one(tmp_path):
    engine = ShardedFlushEngine([FlushProcess(FlushProcessSpec(opener(tmp_path), "WARNING"))])
    try:
        plans = engine.plan([(TOPIC, p, 1, records(p), None) for p in range(3)])
        engine.write(plans)
        assert len([t for table, t, _ in journal(tmp_path) if table == "events"]) == 3
    finally:
        engine.close()
