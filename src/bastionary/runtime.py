"""Resolving where Kafka and ClickHouse are, for every command, from :class:`Settings` alone.

Embedded defaults: the broker that ``bastionary run`` or ``bastionary broker`` started, and
chdb in ``<data dir>/clickhouse``; when a running process holds that chdb directory, other
processes use its HTTP gateway (both found through :mod:`bastionary.devstack.discovery`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

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
from bastionary.storage.client import Client, open_client

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


def connect_clickhouse(settings: Settings, role: GatewayRole = "writer") -> ClickHouseHandle:
    """Open ClickHouse: in-process chdb, the holder's gateway if chdb is taken, or a server."""
    dsn = settings.clickhouse_url()
    if not dsn.startswith("chdb:"):
        return ClickHouseHandle(open_client(dsn, settings.database, create=role == "writer"), False, "server")
    info = read_gateway_file(gateway_file(settings.data_path))
    if info is not None and gateway_alive(info):
        # A running worker holds the chdb directory; chdb admits one process per directory.
        client = open_client(gateway_dsn(info, role), info.get("database") or settings.database)
        return ClickHouseHandle(client, False, f"gateway http://{info['host']}:{info['port']}")
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
