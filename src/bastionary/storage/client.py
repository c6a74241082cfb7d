"""Opening ClickHouse: an in-process chdb database or a server, the same code either way.

Only the DSN differs. chdb allows one process per data directory, so when the directory is
held by a running ``bastionary run``, other processes reach it through that process's HTTP
gateway (see :mod:`bastionary.devstack.gateway`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect import common as clickhouse_common

Client = Any  # clickhouse-connect's Client (HttpClient or ChdbClient); the library ships no stubs


class DataDirLocked(Exception):
    """The chdb directory is held by another process (normally a running worker)."""


def open_client(dsn: str, database: str | None, create: bool = False) -> Client:
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
