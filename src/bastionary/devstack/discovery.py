"""How the processes of one data dir find the embedded pieces another process started.

``<data dir>/broker.json`` names the embedded broker (``bastionary run`` or ``bastionary
broker``), and ``<data dir>/query-gateway.json`` the HTTP gateway of the process that holds
the chdb directory (mode 600: it holds the gateway's passwords).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from bastionary.kafka import KafkaTarget

GatewayInfo = dict[str, Any]
GatewayRole = Literal["reader", "writer"]  # the gateway's two accounts


def broker_file(data_dir: Path) -> Path:
    return data_dir / "broker.json"


def gateway_file(data_dir: Path) -> Path:
    return data_dir / "query-gateway.json"


def write_broker_file(data_dir: Path, target: KafkaTarget) -> None:
    path = broker_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": target.bootstrap, "log_epoch": target.log_epoch, "pid": os.getpid()}))
    tmp.replace(path)


def running_broker(data_dir: Path) -> KafkaTarget | None:
    """The embedded broker started from this data dir, if its process is still up."""
    try:
        info = json.loads(broker_file(data_dir).read_text())
        os.kill(info["pid"], 0)
        return KafkaTarget(info["bootstrap"], int(info["log_epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_gateway_file(path: Path, info: GatewayInfo) -> None:
    """Publish where the gateway listens; the file holds passwords, so only its owner may read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0o600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info | {"pid": os.getpid()}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_gateway_file(path: Path) -> GatewayInfo | None:
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def gateway_alive(info: GatewayInfo) -> bool:
    try:
        with socket.create_connection((info["host"], int(info["port"])), timeout=1.0):
            return True
    except (OSError, KeyError, ValueError, TypeError):
        return False


def gateway_dsn(info: GatewayInfo, role: GatewayRole) -> str:
    user, host = info[role], str(info["host"])
    host = f"[{host}]" if ":" in host else host
    auth = f"{quote(user['user'], safe='')}:{quote(user['password'], safe='')}"
    return f"http://{auth}@{host}:{info['port']}/{quote(str(info.get('database') or ''), safe='')}"
