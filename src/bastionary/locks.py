"""One owner per part of a data dir: the embedded broker, the chdb directory, each worker.

A process takes an exclusive lock on each part it will own before it touches anything in
the data dir. The locks are ``flock``s on files under ``<data dir>/locks``: the kernel drops
them when the process ends, however it ends, so a killed owner never leaves a stale lock.
A second process gets one line naming the owner, and exits non-zero.

Parts, not the whole directory: several ``bastionary worker`` processes (each its own worker
id) may share one data dir with one ``bastionary broker`` and one ``serve-clickhouse``,
while a second ``bastionary run`` (which owns all three) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Hashable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

BROKER = "broker"
CLICKHOUSE = "clickhouse"


def worker_part(worker_id: str) -> str:
    return f"worker-{worker_id}"


class DataDirInUse(RuntimeError):
    """Another process owns a part of the data dir; the message says which and who."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid', '?')} (`{info.get('command', '?')}`, since {since})"


@contextlib.contextmanager
def owning(data_dir: Path, *parts: str, command: str | None = None) -> Iterator[None]:
    """Hold ``parts`` of ``data_dir`` for the duration; raises :class:`DataDirInUse`."""
    directory = data_dir / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(["bastionary", *sys.argv[1:2]])
    held: list[int] = []
    try:
        for part in parts:
            path = directory / f"{part}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DataDirInUse(
                    f"{data_dir} is in use: its {part} is owned by {_holder(path)}; stop that process,"
                    " or give this one another BASTIONARY_DATA_DIR"
                ) from None
            held.append(fd)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode())
        yield
    finally:
        for fd in held:
            os.close(fd)


class KeyedLocks(Generic[K]):
    """In-process, not a file lock: one asyncio lock per key, so work under one key runs one
    at a time while other keys go on. A key's lock is dropped once no task holds or waits for
    it: keys come from outside (notice ids, idempotency keys) and are unbounded."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def held(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
