"""A worker process for test_flush_sigkill: the real usage sink, ClickHouse (chdb) and RocksDB,
killed with SIGKILL just after one step of one flush.

The partition is a fixed generated workload held in memory (Kafka's part is only to deliver
from the committed offset, which this process keeps in ``<dir>/committed``, written after the
flush's records are acked, as a Kafka commit would be). Run as::

    python -m tests.integration.flush_kill_child DIR NOW_MS [STEP FLUSH] [--flush-process]
    python -m tests.integration.flush_kill_child DIR NOW_MS [STEP FLUSH] --flush-processes=N --clickhouse=DSN

STEP is one of ``plan``, ``insert_markers``, ``insert_events``, ``insert_rollups``,
``dedupe.record``, ``kafka_commit``: the process kills itself right after that step of its
FLUSH-th flush. With ``--flush-process`` the engine runs in a flush process
(:mod:`bastionary.metering.flush_process`), which is the one killed (``kafka_commit`` is
this process's step); this process then exits with ``FLUSH_PROCESS_DIED``, as a worker stops
after a failed flush.

With ``--flush-processes=N`` the workload is spread over ``PARTITIONS`` partitions and N flush
processes share them (:mod:`bastionary.metering.flush_shards`), writing to the ClickHouse
server at DSN (chdb admits one process). Only one of them is killed: the first for
``insert_markers`` (the step only it takes), else the last, so the others finish their share
of the step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bastionary.catalog import load_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.flush_process import FlushProcess, FlushProcessDied, FlushProcessSpec
from bastionary.metering.flush_shards import ShardedFlushEngine
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.meters import Meter
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import Admission, InboundRecord
from bastionary.metering.sink import SinkConfig, UsageSink
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.tools.workload import Workload, generate
from bastionary.worker.flushing import start_flush_processes
from tests.unit.sink_fakes import FakeLog

TOPIC = "usage.events"
EVENTS = 1_500
PARTITIONS = 4  # with --flush-processes
RECORDS_PER_FLUSH = 60
HORIZON = timedelta(days=35)
LIMITS = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))
FLUSH_PROCESS_DIED = 3  # the exit code when the flush process died under the flush


def workload(now_ms: int) -> Workload:
    return generate(EVENTS, customers=40, now=datetime.fromtimestamp(now_ms / 1000, tz=UTC), seed=11)


def records(load: Workload, now_ms: int, partitions: int = 1) -> list[InboundRecord]:
    """The workload's records in the order they are read, each in the partition of its key (as
    a producer's partitioner puts them: a repeat goes where its first copy went, the only place
    dedupe looks)."""
    next_offset = [0] * partitions
    made = []
    for r in load.records:
        partition = zlib.crc32(r.key or b"") % partitions
        made.append(InboundRecord(TOPIC, partition, next_offset[partition], now_ms, r.key, r.value, list(r.headers)))
        next_offset[partition] += 1
    return made


class _Killer:
    def __init__(self, step: str | None, flush: int):
        self.step, self.flush, self.flushes = step, flush, 0

    def after(self, step: str) -> None:
        if step == self.step and self.flushes == self.flush:
            os.kill(os.getpid(), signal.SIGKILL)


class _KilledStore(ClickHouseUsageStore):
    killer: _Killer

    def insert_markers(self, rows: Any) -> None:
        super().insert_markers(rows)
        self.killer.after("insert_markers")

    def insert_events(self, rows: Any, token: str) -> None:
        super().insert_events(rows, token)
        self.killer.after("insert_events")

    def insert_rollups(self, rows: Any, token: str) -> None:
        super().insert_rollups(rows, token)
        self.killer.after("insert_rollups")


class _KilledDedupe(RocksDedupeStore):
    killer: _Killer

    def record(self, *args: Any, **kwargs: Any) -> None:
        super().record(*args, **kwargs)
        self.killer.after("dedupe.record")


class _CountedEngine(LocalFlushEngine):
    """Counts flushes by their plans, so the killer knows which flush it is in."""

    killer: _Killer

    def plan(self, requests: Any, rows_wanted: Any = None) -> Any:
        self.killer.flushes += 1
        plans = super().plan(requests, rows_wanted)
        self.killer.after("plan")
        return plans


def killed_engine(
    root: Path, killer: _Killer, clickhouse_dsn: str, meters: list[Meter], database: str = "bastionary"
) -> _CountedEngine:
    """The real engine on ClickHouse and RocksDB, killing its process after ``killer``'s step."""
    client = open_client(clickhouse_dsn, database, create=True)
    store = _KilledStore(client)
    store.migrate()
    store.killer = killer
    dedupe = _KilledDedupe(root / "dedupe", int(HORIZON.total_seconds()))
    dedupe.killer = killer
    engine = _CountedEngine(store, dedupe, MeterIndex(meters), LIMITS, HORIZON, closers=[dedupe.close])
    engine.killer = killer
    return engine


@dataclass(frozen=True)
class KilledEngineInChild:
    """Opens :func:`killed_engine` in the flush process (sent there by reference)."""

    root: Path
    step: str | None
    flush: int
    clickhouse_dsn: str
    meters: list[Meter]
    database: str = "bastionary"

    def __call__(self) -> LocalFlushEngine:
        return killed_engine(self.root, _Killer(self.step, self.flush), self.clickhouse_dsn, self.meters, self.database)


def sharded_engine(root: Path, killer: _Killer, processes: int, server_dsn: str, database: str) -> ShardedFlushEngine:
    meters = load_catalog(None).meters
    killed = 0 if killer.step == "insert_markers" else processes - 1
    openers = [
        KilledEngineInChild(
            root / f"shard-{shard}",
            killer.step if shard == killed else None,
            killer.flush,
            server_dsn,
            meters,
            database,
        )
        for shard in range(processes)
    ]
    return ShardedFlushEngine(start_flush_processes([FlushProcessSpec(opener) for opener in openers]))


def engine_for(root: Path, killer: _Killer, in_flush_process: bool) -> LocalFlushEngine | FlushProcess:
    catalog = load_catalog(None)
    dsn = f"chdb://{root}/clickhouse"
    if not in_flush_process:
        return killed_engine(root, killer, dsn, catalog.meters)
    # chdb lives in the flush process alone here: this process never opens it.
    opener = KilledEngineInChild(root, killer.step, killer.flush, dsn, catalog.meters)
    return FlushProcess(FlushProcessSpec(opener))


async def main(
    root: Path, now_ms: int, killer: _Killer, in_flush_process: bool, shards: tuple[int, str, str] | None = None
) -> None:
    # ``committed`` is a position in the order records are read: every record before it was
    # acked (with several partitions, a commit that lags some of them, as Kafka's may).
    partition = records(workload(now_ms), now_ms, PARTITIONS if shards else 1)
    log = FakeLog()
    log.hold(partition)

    async def dead_letters(letters: Any) -> None:
        return None

    engine = sharded_engine(root, killer, *shards) if shards else engine_for(root, killer, in_flush_process)
    sink = UsageSink(engine, dead_letters, SinkConfig("w", 1), log)
    committed_file = root / "committed"
    position = int(committed_file.read_text()) if committed_file.exists() else 0
    committed, acked = position, set()
    try:
        while position < len(partition):
            for record in partition[position : position + RECORDS_PER_FLUSH]:
                if await sink.admit(record) is Admission.LANDED:
                    acked.add(_position(record))
            position += RECORDS_PER_FLUSH
            while landed := await sink.flush():
                acked.update(_position(r) for r in landed)
            while committed < len(partition) and _position(partition[committed]) in acked:
                committed += 1
            committed_file.write_text(str(committed))
            killer.after("kafka_commit")
    except FlushProcessDied as died:
        # What the worker does when a flush fails: stop, unacked, so a restart replays.
        print(died, file=sys.stderr)
        sys.exit(FLUSH_PROCESS_DIED)
    finally:
        engine.close()


def _position(record: InboundRecord) -> tuple[int, int]:
    return record.partition, record.offset


def run_from_command_line(argv: list[str]) -> None:
    flags = dict(a.partition("=")[::2] for a in argv if a.startswith("--"))
    args = [a for a in argv if not a.startswith("--")]
    directory, now = Path(args[0]), int(args[1])
    step, flush = (args[2], int(args[3])) if len(args) > 2 else (None, 0)
    sharding = None
    if "--flush-processes" in flags:
        sharding = (int(flags["--flush-processes"]), flags["--clickhouse"], flags["--database"])
    asyncio.run(main(directory, now, _Killer(step, flush), "--flush-process" in flags, sharding))


if __name__ == "__main__":
    # Run from this module imported by its name: a flush process unpickles its opener
    # (KilledEngineInChild) by module and name, and never imports its worker's __main__.
    from tests.integration import flush_kill_child

    flush_kill_child.run_from_command_line(sys.argv[1:])
