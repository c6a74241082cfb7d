"""Resolving where Kafka and ClickHouse are, for every command, from :class:`Settings` alone.

Embedded defaults: the broker that ``bastionary run`` or ``bastionary broker`` started, and
chdb in ``<data dir>/clickhouse``; when a running process holds that chdb directory, other
processes use its HTTP gateway (both found through :mod:`bastionary.devstack.discovery`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from bastionary.devstack.discovery import (
    GatewayRole,
    gateway_alive,
    gateway_dsn,
    gateway_file,
    read_gateway_file,
    running_broker,
)
from bastionary.kafka import KafkaTarget
from bastionary.locks import CLICKHOUSE, owning
from bastionary.settings import Settings
from bastionary.storage.client import Client, Compression, open_client

_HELD: list[AbstractContextManager[None]] = []  # locks this process keeps until it exits


class NoBroker(RuntimeError):
    pass


def resolve_kafka(settings: Settings) -> KafkaTarget:
    if settings.kafka_bootstrap:
        return KafkaTarget(settings.kafka_bootstrap, settings.kafka_log_epoch or 0)
    target = running_broker(settings.data_path)
    if target is None:
        raise NoBroker(
            "no Kafka: set BASTIONARY_KAFKA_BOOTSTRAP, or start `bastionary run` / `bastionary broker` "
            f"with the same data dir ({settings.data_path})"
        )
    return target


@dataclass
class ClickHouseHandle:
    client: Client
    in_process: bool  # this process holds the chdb directory (and should serve the gateway)
    dsn_description: str
    # How another process of this one (the flush process) opens the same database: (DSN,
    # database, compression). None for chdb in this process, which no other process may open.
    reopen: tuple[str, str | None, Compression] | None = None


def connect_clickhouse(settings: Settings, role: GatewayRole = "writer") -> ClickHouseHandle:
    """Open ClickHouse: in-process chdb, the holder's gateway if chdb is taken, or a server."""
    dsn = settings.clickhouse_url()
    if not dsn.startswith("chdb:"):
        client = open_client(
            dsn, settings.database, create=role == "writer", compression=settings.clickhouse_compression
        )
        return ClickHouseHandle(client, False, "server", (dsn, settings.database, settings.clickhouse_compression))
    info = read_gateway_file(gateway_file(settings.data_path))
    if info is not None and gateway_alive(info):
        # A running worker holds the chdb directory; chdb admits one process per directory.
        dsn, database = gateway_dsn(info, role), info.get("database") or settings.database
        client = open_client(dsn, database)  # uncompressed: the gateway is on loopback
        return ClickHouseHandle(client, False, f"gateway http://{info['host']}:{info['port']}", (dsn, database, "none"))
    # This process is about to hold the chdb directory: own it first (chdb's own lock would
    # only fail later, with a raw error and after the directory was touched).
    hold_for_process(settings.data_path, CLICKHOUSE)
    client = open_client(dsn, settings.database, create=True)
    return ClickHouseHandle(client, True, f"chdb:{dsn[5:]}")


def hold_for_process(data_dir: Path, *parts: str) -> None:
    """Own ``parts`` of the data dir until this process exits (see :mod:`bastionary.locks`)."""
    lock = owning(data_dir, *parts)
    lock.__enter__()
    _HELD.append(lock)


def exit_past_engine_teardown(code: object) -> NoReturn:
    """End this process with ``code`` (as ``SystemExit(code)`` would) without chdb's teardown.

    chdb shuts its engine down in C++ exit handlers that race the engine's own threads
    (chdb-core issue 177, "interpreter-exit SIGSEGV"). A worker that had stopped cleanly on
    SIGTERM (Faust stopped, its dedupe cache closed) then died with SIGSEGV inside those
    handlers in 16 of 33 stops, or hung in them until killed 20 s later in 3, on the embedded
    stack on 2026-12-02. A core dump put the main thread in ``exit()``'s handlers and the
    faulting thread in chdb. Leaving through ``os._exit``, 10 of 10 stops exited 0.

    By the time a long-running command returns, everything it wrote is durable: each INSERT
    returned, the dedupe cache is closed, and Kafka offsets were committed only for what
    landed. Ending here is then what a SIGKILL after the last write would do, a case the crash
    drills cover. The exit work of Python's that matters here, flushing logs and output, is
    done first.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")  # as the interpreter shows a SystemExit's message
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing more can reach it
            stream.flush()
    os._exit(status)
