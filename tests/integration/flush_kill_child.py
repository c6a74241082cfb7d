"""A worker process for test_flush_sigkill: the real usage sink, ClickHouse (chdb) and RocksDB,
killed with SIGKILL just after one step of one flush.

The partition is a fixed generated workload held in memory (Kafka's part is only to deliver
from the committed offset, which this process keeps in ``<dir>/committed``, written after the
flush's records are acked, as a Kafka commit would be). Run as::

    python -m tests.integration.flush_kill_child DIR NOW_MS [STEP FLUSH]

STEP is one of ``insert_markers``, ``insert_events``, ``insert_rollups``, ``dedupe.record``,
``kafka_commit``: the process kills itself right after that step of its FLUSH-th flush.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bastionary.catalog import load_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import Admission, InboundRecord
from bastionary.metering.sink import SinkConfig, UsageSink
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.tools.workload import Workload, generate
from tests.unit.sink_fakes import FakeLog

TOPIC = "usage.events"
EVENTS = 1_500
RECORDS_PER_FLUSH = 60
HORIZON = timedelta(days=35)


def workload(now_ms: int) -> Workload:
    return generate(EVENTS, customers=40, now=datetime.fromtimestamp(now_ms / 1000, tz=UTC), seed=11)


def records(load: Workload, now_ms: int) -> list[InboundRecord]:
    return [
        InboundRecord(TOPIC, 0, offset, now_ms, r.key, r.value, list(r.headers))
        for offset, r in enumerate(load.records)
    ]


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


async def main(root: Path, now_ms: int, killer: _Killer) -> None:
    catalog = load_catalog(None)
    partition = records(workload(now_ms), now_ms)
    log = FakeLog()
    log.hold(partition)
    client = open_client(f"chdb://{root}/clickhouse", "bastionary", create=True)
    store = _KilledStore(client)
    store.migrate()
    store.killer = killer
    dedupe = _KilledDedupe(root / "dedupe", int(HORIZON.total_seconds()))
    dedupe.killer = killer
    limits = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))

    async def dead_letters(letters: Any) -> None:
        return None

    sink = UsageSink(store, dedupe, MeterIndex(catalog.meters), dead_letters, SinkConfig("w", 1, limits, HORIZON), log)
    committed_file = root / "committed"
    position = int(committed_file.read_text()) if committed_file.exists() else 0
    committed, acked = position, set()
    while position < len(partition):
        for record in partition[position : position + RECORDS_PER_FLUSH]:
            if await sink.admit(record) is Admission.LANDED:
                acked.add(record.offset)
        position += RECORDS_PER_FLUSH
        killer.flushes += 1
        while landed := await sink.flush():
            acked.update(r.offset for r in landed)
        while committed in acked:
            committed += 1
        committed_file.write_text(str(committed))
        killer.after("kafka_commit")
    dedupe.close()


if __name__ == "__main__":
    directory, now = Path(sys.argv[1]), int(sys.argv[2])
    step, flush = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 3 else (None, 0)
    asyncio.run(main(directory, now, _Killer(step, flush)))
