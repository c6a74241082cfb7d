"""Resolving where Kafka and ClickHouse are, for every command, from :class:`Settings` alone.

Embedded defaults: the broker that ``bastionary run`` or ``bastionary broker`` started
(found through ``<data dir>/broker.json``), and chdb in ``<data dir>/clickhouse``. When a
running process holds that chdb directory, other processes use its HTTP gateway.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bastionary.settings import Settings
from bastionary.storage.clickhouse import DataDirLocked, gateway_file, open_client


class NoBroker(RuntimeError):
    pass


def broker_file(settings: Settings) -> Path:
    return settings.data_path / "broker.json"


def write_broker_file(settings: Settings, bootstrap: str) -> None:
    path = broker_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": bootstrap, "pid": os.getpid()}))
    tmp.replace(path)


def running_broker(settings: Settings) -> str | None:
    """The bootstrap of the embedded broker started from this data dir, if it is still up."""
    path = broker_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(info["pid"], 0)
    except (OSError, ValueError, KeyError):
        return None
    return info["bootstrap"]


def resolve_bootstrap(settings: Settings) -> str:
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    bootstrap = running_broker(settings)
    if bootstrap is None:
        raise NoBroker(
            "no Kafka: set BASTIONARY_KAFKA_BOOTSTRAP, or start `bastionary run` / `bastionary broker` "
            f"with the same data dir ({settings.data_path})"
        )
    return bootstrap


@dataclass
class ClickHouseHandle:
    client: object
    in_process: bool  # this process holds the chdb directory (and should serve the gateway)
    dsn_description: str


def connect_clickhouse(settings: Settings, role: str = "writer") -> ClickHouseHandle:
    """Open ClickHouse: in-process chdb, the holder's gateway if chdb is taken, or a server."""
    from bastionary.storage.http_gateway import gateway_dsn, read_gateway_file

    dsn = settings.clickhouse_url()
    if dsn.startswith("chdb:"):
        try:
            client = open_client(dsn, settings.database, create=True)
            return ClickHouseHandle(client, True, f"chdb:{dsn[5:]}")
        except DataDirLocked:
            info = read_gateway_file(gateway_file(settings.data_path))
            if info is None:
                raise
            client = open_client(gateway_dsn(info, role), info.get("database") or settings.database)
            return ClickHouseHandle(client, False, f"gateway http://{info['host']}:{info['port']}")
    return ClickHouseHandle(open_client(dsn, settings.database, create=role == "writer"), False, "server")
