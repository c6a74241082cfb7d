"""Where a worker's flushes are planned and written: in its own process, or in its flush
process (``BASTIONARY_FLUSH_PROCESS``, :mod:`bastionary.metering.flush_process`), or in
several that share its partitions (``BASTIONARY_FLUSH_PROCESSES``,
:mod:`bastionary.metering.flush_shards`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import structlog

from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.flush_process import FlushProcess, FlushProcessSpec
from bastionary.metering.flush_shards import ShardedFlushEngine
from bastionary.metering.landing import FlushEngine
from bastionary.metering.meters import Meter
from bastionary.runtime import ClickHouseHandle
from bastionary.settings import Settings
from bastionary.worker.engine_parts import EngineParts, OpenInFlushProcess

log = structlog.get_logger(__name__)


def flush_engine(settings: Settings, meters: list[Meter], handle: ClickHouseHandle, dedupe_path: Path) -> FlushEngine:
    """The worker's engine: in this process on ``handle``'s client, or in a flush process."""
    parts = EngineParts(
        meters,
        RecordLimits(settings.max_record_bytes, settings.max_batch_events, settings.max_future_skew),
        dedupe_path,
        settings.dedupe_horizon,
        settings.examine_processes,
        settings.log_level,
        settings.log_format,
    )
    if not settings.flush_process:
        return parts.open(handle.client)
    if handle.reopen is None:
        raise SystemExit(
            "BASTIONARY_FLUSH_PROCESS needs ClickHouse outside the worker (BASTIONARY_CLICKHOUSE_DSN"
            " naming a server): this worker holds chdb in its own process, which no other process may open"
        )
    dsn, database, compression = handle.reopen
    specs = [
        FlushProcessSpec(
            OpenInFlushProcess(
                replace(parts, dedupe_path=shard_dedupe_path(dedupe_path, shard)), dsn, database, compression
            ),
            settings.log_level,
            settings.log_format,
        )
        for shard in range(settings.flush_processes)
    ]
    if len(specs) == 1:
        return FlushProcess(specs[0])
    return ShardedFlushEngine(start_flush_processes(specs))


def shard_dedupe_path(dedupe_path: Path, shard: int) -> Path:
    """Shard 0 keeps the single flush process's cache, so turning shards on keeps its keys."""
    return dedupe_path if shard == 0 else dedupe_path.with_name(f"{dedupe_path.name}.shard-{shard}")


def start_flush_processes(specs: list[FlushProcessSpec]) -> list[FlushProcess]:
    """Started at once (each takes a second or two to open its storage); if one fails, the
    others are closed and the failure is the worker's."""
    with ThreadPoolExecutor(len(specs)) as pool:
        starting = [pool.submit(FlushProcess, spec) for spec in specs]
    started = [future.result() for future in starting if future.exception() is None]
    failed = [future.exception() for future in starting if future.exception() is not None]
    if failed:
        for process in started:
            try:
                process.close()
            except Exception:
                log.exception("closing a started flush process failed", pid=process.pid)
        raise failed[0]  # type: ignore[misc]
    return started
