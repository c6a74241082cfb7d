"""The dedupe cache on local disk (RocksDB through rocksdict), so 1M+ keys stay off-heap.

Layout, all keys bytes:
  k<topic>\0<partition>\0<json [source, id]>  -> offset, index, seen_at, payload digest, log epoch
  h<topic>\0<partition>                        -> (epoch, offset) through which all keys are written

Keys are not scoped by epoch: a topic recreated under the same name (a restarted embedded
broker) still recognises events counted before.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import orjson
from rocksdict import Options, Rdict, WriteBatch

from bastionary.dedupe import Sighting

_VALUE = struct.Struct(">qIq16sq")
_HWM = struct.Struct(">qq")


class RocksDedupeStore:
    def __init__(self, path: Path, horizon_seconds: int):
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(32 * 1024 * 1024)
        self._db = Rdict(str(path), options)
        self._path = path
        self.horizon_seconds = horizon_seconds

    @staticmethod
    def _scope(topic: str, partition: int) -> bytes:
        return f"{topic}\0{partition}\0".encode()

    def key(self, topic: str, partition: int, source: str, event_id: str) -> bytes:
        return b"k" + self._scope(topic, partition) + orjson.dumps((source, event_id))

    def get(self, key: bytes, now: int) -> Sighting | None:
        raw = self._db.get(key)
        if raw is None:
            return None
        offset, index, seen_at, digest, epoch = _VALUE.unpack(raw)
        if seen_at < now - self.horizon_seconds:
            return None  # outside the horizon: a new event for all purposes
        return Sighting(offset, index, seen_at, digest, epoch)

    def record(
        self,
        topic: str,
        partition: int,
        entries: Iterable[tuple[bytes, Sighting]],
        through_offset: int,
        epoch: int = 0,
    ) -> None:
        """Write the keys and advance the epoch's high-water mark in one atomic batch."""
        batch = WriteBatch(raw_mode=True)
        for key, s in entries:
            batch.put(key, _VALUE.pack(s.offset, s.index, s.seen_at, s.payload_hash, s.log_epoch))
        batch.put(b"h" + self._scope(topic, partition), _HWM.pack(epoch, through_offset))
        self._db.write(batch)

    def high_water(self, topic: str, partition: int) -> tuple[int, int] | None:
        """The (epoch, offset) through which this cache holds every key, if any."""
        raw = self._db.get(b"h" + self._scope(topic, partition))
        return None if raw is None else _HWM.unpack(raw)

    def forget_partition(self, topic: str, partition: int) -> None:
        scope = self._scope(topic, partition)
        self._db.delete_range(b"k" + scope, b"k" + scope + b"\xff")
        self._db.delete(b"h" + scope)

    def purge_expired(self, now: int | None = None, chunk: int = 50_000) -> int:
        """Drop keys older than the horizon, then compact so the disk shrinks as well; returns
        how many. Past the horizon a key means a new event anyway (see :meth:`get`), so this
        changes no verdict. Run it off the event loop: it reads every key."""
        cutoff = (now if now is not None else int(time.time())) - self.horizon_seconds
        purged = 0
        batch = WriteBatch(raw_mode=True)
        for key, value in self._db.items(from_key=b"k"):
            if cast(bytes, key)[:1] != b"k":  # raw mode: every key is bytes
                break
            if _VALUE.unpack(value)[2] < cutoff:
                batch.delete(key)
                purged += 1
                if purged % chunk == 0:
                    self._db.write(batch)
                    batch = WriteBatch(raw_mode=True)
        self._db.write(batch)
        if purged:
            self._db.compact_range(b"k", b"l")
        return purged

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._path.iterdir() if p.is_file())

    def close(self) -> None:
        self._db.close()
