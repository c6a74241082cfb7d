"""What a flush engine is opened from, in the worker or in a flush process.

A flush process unpickles :class:`OpenInFlushProcess` before anything else, so this module
imports only what the engine is made of: not the settings, the runtime or the Kafka client,
which the child never uses (``tests/unit/test_flush_process_imports.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.examine_pool import ExaminePool
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.meters import Meter
from bastionary.metering.readings import MeterIndex
from bastionary.storage.client import Client, Compression, open_client, skip_numpy_and_pandas_imports
from bastionary.storage.usage import ClickHouseUsageStore


@dataclass(frozen=True)
class EngineParts:
    """What an engine is made of, apart from its ClickHouse client; picklable, for the child."""

    meters: list[Meter]
    limits: RecordLimits
    dedupe_path: Path
    dedupe_horizon: timedelta
    examine_processes: int
    log_level: str
    log_format: str

    def open(self, client: Client, *also_close: Callable[[], None]) -> LocalFlushEngine:
        dedupe = RocksDedupeStore(self.dedupe_path, int(self.dedupe_horizon.total_seconds()))
        pool = (
            ExaminePool(self.meters, self.limits, self.examine_processes, self.log_level, self.log_format)
            if self.examine_processes
            else None
        )
        closers = [*([pool.close] if pool else []), dedupe.close, *also_close]
        store = ClickHouseUsageStore(client)
        meters = MeterIndex(self.meters)
        return LocalFlushEngine(store, dedupe, meters, self.limits, self.dedupe_horizon, pool, closers=closers)


@dataclass(frozen=True)
class OpenInFlushProcess:
    """Opens the engine in the flush process, with a ClickHouse client of its own."""

    parts: EngineParts
    clickhouse_dsn: str
    database: str | None
    compression: Compression

    def __call__(self) -> LocalFlushEngine:
        skip_numpy_and_pandas_imports()
        client = open_client(self.clickhouse_dsn, self.database, compression=self.compression)
        return self.parts.open(client, client.close)
