"""Resolving where Kafka and ClickHouse are, for every command, from :class:`Settings` alone.

Embedded defaults: the broker that ``bastionary run`` or ``bastionary broker`` started
(found through ``<data dir>/broker.json``), and chdb in ``<data dir>/clickhouse``. When a
running process holds that chdb directory, other processes use its HTTP gateway.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from bastionary.locks import CLICKHOUSE, owning
from bastionary.settings import Settings
from bastionary.storage.clickhouse import gateway_file, open_client

_HELD: list[object] = []  # locks this process keeps until it exits


class NoBroker(RuntimeError):
    pass


def broker_file(settings: Settings) -> Path:
    return settings.data_path / "broker.json"


@dataclass(frozen=True)
class KafkaTarget:
    bootstrap: str
    log_epoch: int  # an embedded broker starts empty, so each start is a new epoch


def write_broker_file(settings: Settings, target: KafkaTarget) -> None:
    path = broker_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": target.bootstrap, "log_epoch": target.log_epoch, "pid": os.getpid()}))
    tmp.replace(path)


def running_broker(settings: Settings) -> KafkaTarget | None:
    """The embedded broker started from this data dir, if its process is still up."""
    path = broker_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(info["pid"], 0)
        return KafkaTarget(info["bootstrap"], int(info["log_epoch"]))
    except (OSError, ValueError, KeyError):
        return None


def resolve_kafka(settings: Settings) -> KafkaTarget:
    if settings.kafka_bootstrap:
        return KafkaTarget(settings.kafka_bootstrap, settings.kafka_log_epoch or 0)
    target = running_broker(settings)
    if target is None:
        raise NoBroker(
            "no Kafka: set BASTIONARY_KAFKA_BOOTSTRAP, or start `bastionary run` / `bastionary broker` "
            f"with the same data dir ({settings.data_path})"
        )
    return target


@dataclass
class ClickHouseHandle:
    client: object
    in_process: bool  # this process holds the chdb directory (and should serve the gateway)
    dsn_description: str


def _gateway_alive(info: dict) -> bool:
    try:
        with socket.create_connection((info["host"], int(info["port"])), timeout=1.0):
            return True
    except (OSError, KeyError, ValueError):
        return False


def connect_clickhouse(settings: Settings, role: str = "writer") -> ClickHouseHandle:
    """Open ClickHouse: in-process chdb, the holder's gateway if chdb is taken, or a server."""
    from bastionary.storage.http_gateway import gateway_dsn, read_gateway_file

    dsn = settings.clickhouse_url()
    if not dsn.startswith("chdb:"):
        return ClickHouseHandle(open_client(dsn, settings.database, create=role == "writer"), False, "server")
    info = read_gateway_file(gateway_file(settings.data_path))
    if info is not None and _gateway_alive(info):
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
