"""Opening ClickHouse and the few writes and reads the pipeline needs.

The same code serves an in-process chdb database and a ClickHouse server: only the DSN
differs. chdb allows one process per data directory, so when the directory is held by a
running ``bastionary run``, other processes reach it through that process's HTTP gateway
(see :mod:`bastionary.storage.http_gateway`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
import structlog
from clickhouse_connect import common as clickhouse_common

from bastionary.metering.rollup import ROLLUP_COLUMNS
from bastionary.storage.migrations import apply_migrations

log = structlog.get_logger(__name__)

EVENT_COLUMNS = (
    "event_id",
    "source",
    "type",
    "customer_id",
    "time",
    "data",
    "payload_hash",
    "ingested_at",
    "ingest_topic",
    "ingest_epoch",
    "ingest_partition",
    "ingest_offset",
    "ingest_index",
)
PROGRESS_COLUMNS = (
    "topic",
    "log_epoch",
    "partition",
    "first_offset",
    "last_offset",
    "records",
    "events_accepted",
    "duplicates",
    "dead_lettered",
    "worker_id",
    "written_at",
    "last_fingerprint",
)


class DataDirLocked(Exception):
    """The chdb directory is held by another process (normally a running worker)."""


def gateway_file(data_dir: Path) -> Path:
    return data_dir / "query-gateway.json"


def open_client(dsn: str, database: str | None, create: bool = False):
    """A clickhouse-connect client on ``database``; ``create`` makes the database first."""
    parts = urlsplit(dsn)
    # The sink reads (recovery) and writes (flushes) from worker threads at once; ClickHouse
    # rejects concurrent queries in one HTTP session, and the pipeline needs no session state.
    clickhouse_common.set_setting("autogenerate_session_id", False)
    if parts.scheme == "chdb":
        path = Path(parts.path)
        path.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        except Exception as exc:  # chdb reports a held directory as a generic error
            if "lock" in str(exc).lower() or "already running" in str(exc).lower():
                raise DataDirLocked(str(path)) from exc
            raise
    else:
        bootstrap = clickhouse_connect.get_client(dsn=dsn, database="default", compress=False)
    if database and create:
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    if not database:
        return bootstrap
    if parts.scheme == "chdb":
        return clickhouse_connect.get_client(dsn=f"chdb://{Path(parts.path)}", database=database)
    return clickhouse_connect.get_client(dsn=dsn, database=database, compress=False)


@dataclass(frozen=True)
class FlushMarker:
    log_epoch: int
    first_offset: int
    last_offset: int
    last_fingerprint: int = 0  # 0: written before fingerprints existed
    worker_id: str = ""


class UsageStore:
    """The pipeline's writes (idempotent by token) and its recovery reads."""

    def __init__(self, client):
        self.client = client

    def migrate(self) -> list[int]:
        return apply_migrations(self.client)

    def insert_events(self, rows: list[tuple], token: str) -> None:
        if rows:
            self.client.insert(
                "usage_events", rows, column_names=EVENT_COLUMNS, settings={"insert_deduplication_token": token}
            )

    def insert_rollups(self, rows: list[tuple], token: str) -> None:
        if rows:
            self.client.insert(
                "usage_rollup_1m", rows, column_names=ROLLUP_COLUMNS, settings={"insert_deduplication_token": token}
            )

    def insert_markers(self, rows: list[tuple]) -> None:
        self.client.insert("ingest_progress", rows, column_names=PROGRESS_COLUMNS)

    def latest_marker(self, topic: str, partition: int) -> FlushMarker | None:
        """The newest flush of a partition, over all epochs."""
        rows = self.client.query(
            "SELECT log_epoch, first_offset, last_offset, last_fingerprint, worker_id FROM ingest_progress"
            " WHERE topic = {t:String} AND partition = {p:UInt32}"
            " ORDER BY log_epoch DESC, last_offset DESC LIMIT 1",
            parameters={"t": topic, "p": partition},
        ).result_rows
        if not rows:
            return None
        epoch, first, last, fingerprint, worker_id = rows[0]
        return FlushMarker(int(epoch), int(first), int(last), int(fingerprint), str(worker_id))

    def sightings_after(self, topic: str, partition: int, after: tuple[int, int] | None, since: datetime):
        """Dedupe keys of flushes past position ``after`` (epoch, offset): what a cache lacks."""
        epoch, offset = after if after is not None else (0, -1)
        return self.client.query(
            "SELECT source, event_id, ingest_epoch, ingest_offset, ingest_index,"
            " toUnixTimestamp(ingested_at), payload_hash"
            " FROM usage_events WHERE ingest_topic = {t:String} AND ingest_partition = {p:UInt32}"
            " AND (ingest_epoch, ingest_offset) > ({e:UInt64}, {o:Int64})"
            " AND ingested_at >= {since:DateTime64(3, 'UTC')}",
            parameters={"t": topic, "p": partition, "e": epoch, "o": offset, "since": since},
        ).result_rows
