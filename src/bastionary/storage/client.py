"""Opening ClickHouse: an in-process chdb database or a server, the same code either way.

Only the DSN differs. chdb allows one process per data directory, so when the directory is
held by a running ``bastionary run``, other processes reach it through that process's HTTP
gateway (see :mod:`bastionary.devstack.gateway`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect import common as clickhouse_common

Client = Any  # clickhouse-connect's Client (HttpClient or ChdbClient); the library ships no stubs


class DataDirLocked(Exception):
    """The chdb directory is held by another process (normally a running worker)."""


_engine_in_process = False


def engine_in_process() -> bool:
    """Whether this process has opened chdb (the embedded engine runs inside it)."""
    return _engine_in_process


Compression = Literal["lz4", "none"]


def skip_numpy_and_pandas_imports() -> None:
    """Keep clickhouse-connect from importing pandas and numpy in this process.

    On a process's first insert it imports pandas (and, through it, pyarrow) only to ask
    whether the rows are a DataFrame, and numpy only to ask whether they are an array. The
    pipeline's rows never are either. pandas costs about 80 MB of RSS (40 of it anonymous)
    and 0.25 s in each process that inserts: the worker, and each flush process again; numpy
    alone 10.5 MB (5.5 anonymous). Saying both are absent skips them. Only the worker's
    processes do this: a script that opens a client and wants ``query_df`` or ``query_np``
    still gets them. chdb in this process imports numpy and pyarrow itself at its first
    query, so the saving is a ClickHouse server's (the production shape).
    """
    from clickhouse_connect.driver import options

    if "pd" not in vars(options):  # not resolved yet: this process has not imported it for a client
        options.pd = None
        options.pd_time_test = None
    if "np" not in vars(options) and "numpy" not in sys.modules:  # numpy imported already costs nothing more
        options.np = None


def open_client(dsn: str, database: str | None, create: bool = False, compression: Compression = "none") -> Client:
    """A clickhouse-connect client on ``database``; ``create`` makes the database first.

    ``compression`` applies to a server: with ``lz4``, insert bodies go lz4-framed and query
    results come back so. A flush's JSON lines shrink about 4.6x (8.4 MB to 1.8 MB for 21,000
    batch events) for about 0.4 us of the worker's CPU per event; uncompressed, the batch
    target of 100,000 events/s would send about 320 Mbit/s to ClickHouse per worker.
    """
    parts = urlsplit(dsn)
    compress: str | bool = "lz4" if compression == "lz4" else False
    # The sink reads (recovery) and writes (flushes) from worker threads at once; ClickHouse
    # rejects concurrent queries in one HTTP session, and the pipeline needs no session state.
    clickhouse_common.set_setting("autogenerate_session_id", False)
    # A naive datetime is read in the column's zone (UTC for every table here) by every insert:
    # ClickHouse reads the JSON lines' naive text so, and clickhouse-connect's Native insert
    # otherwise reads it in this process's local zone, which moves the instant on a host whose
    # TZ is not UTC. The pipeline builds aware datetimes; rows read back from ClickHouse and
    # written again may not be.
    clickhouse_common.set_setting("naive_datetime_insert", "server")
    if parts.scheme == "chdb":
        global _engine_in_process
        _engine_in_process = True  # before the attempt: a failed open may have started the engine
        path = Path(parts.path)
        path.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        except Exception as exc:  # chdb reports a held directory as a generic error
            if "lock" in str(exc).lower() or "already running" in str(exc).lower():
                raise DataDirLocked(str(path)) from exc
            raise
    else:
        bootstrap = clickhouse_connect.get_client(dsn=dsn, database="default", compress=compress)
    if database and create:
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    if not database:
        return bootstrap
    if parts.scheme == "chdb":
        return FreshAfterFailure(
            lambda: clickhouse_connect.get_client(dsn=f"chdb://{Path(parts.path)}", database=database)
        )
    return clickhouse_connect.get_client(dsn=dsn, database=database, compress=compress)


class FreshAfterFailure:
    """A chdb client whose connection is replaced once a call on it fails.

    chdb (4.4, through clickhouse-connect 1.12) hands the blocks a failed query had streamed to
    the connection's next query, as the start of its answer. One of the same columns returned
    them as its own rows, silently: after ``SELECT number FROM numbers(10)`` failed at 5,
    ``SELECT number FROM numbers(100, 3)`` answered 0, 1, 100, 101, 102 (2026-12-08); one of
    other columns failed to decode. Other connections to the engine are not affected, so a
    fresh one ends it. The failed connection is closed once no other thread is in a call on it.
    """

    def __init__(self, connect: Callable[[], Client]):
        self._connect = connect
        self._client = connect()
        self._calls: dict[int, int] = {}  # id of a connection -> calls in it now
        self._retired: dict[int, Client] = {}  # failed connections still in a call
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            client = self._client
            self._calls[id(client)] = self._calls.get(id(client), 0) + 1
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception:
            with self._lock:
                if self._client is client:
                    self._client = self._connect()
                    self._retired[id(client)] = client
            raise
        finally:
            with self._lock:
                self._calls[id(client)] -= 1
                idle = not self._calls[id(client)]
                if idle:
                    del self._calls[id(client)]
                done = self._retired.pop(id(client)) if idle and id(client) in self._retired else None
            if done is not None:
                done.close()

    def close(self) -> None:
        with self._lock:
            clients, self._retired = [self._client, *self._retired.values()], {}
        for client in clients:
            client.close()


def insert_rows(
    client: Client,
    table: str,
    rows: Sequence[Sequence[Any]],
    column_names: Sequence[str],
    column_types: Sequence[Any] | None = None,
    settings: dict[str, str] | None = None,
) -> None:
    """``client.insert``, leaving nothing behind for the cyclic garbage collector.

    clickhouse-connect's insert context keeps a bound method of itself, so only the cyclic
    collector frees it, and with it the list it was given and every row in that list. A
    flush's rows then waited for the next young collection, which walked them all with the
    GIL held: 26,100 rows in one collection, 40-58 ms every 3 s while 13,000 events/s were
    ingested, stalling entitlement checks and heartbeats (bench --entitlements, each
    collection timed by a gc callback). The context gets a copy of the list, emptied once
    the insert is over, so the rows go as soon as their owner drops them. (A failed insert
    may still leave them to the collector, through its exception; that is rare.)
    """
    batch = list(rows)
    try:
        client.insert(table, batch, column_names=column_names, column_types=column_types, settings=settings)
    finally:
        batch.clear()
