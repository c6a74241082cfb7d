"""The dedupe cache on local disk (RocksDB through rocksdict), so 1M+ keys stay off-heap.

Layout, all keys bytes:
  k<topic>\0<partition>\0<json [source, id]>  -> offset, index, seen_at, payload digest, log epoch
  h<topic>\0<partition>                        -> (epoch, offset) through which all keys are written,
                                                  and the partition's newest seen_at (its broker time)

Keys are not scoped by epoch: a topic recreated under the same name (a restarted embedded
broker) still recognises events counted before.

A key expires by broker time, never by the wall clock: :meth:`get` compares it with the
record being judged, and :meth:`purge_expired` with the newest broker time its partition
has landed. So a producer that stamps records with old times (re-importing last quarter's
usage) keeps its repeats caught, however far behind the wall clock those times are.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from bastionary.dedupe import Sighting

BLOCK_CACHE_BYTES = 64 * 1024 * 1024
WRITE_CHUNK_KEYS = 2_048  # 0.65-0.81 ms of the GIL per write, measured
_VALUE = struct.Struct(">qIq16sq")
_HWM = struct.Struct(">qqq")  # epoch, offset, newest seen_at
_HWM_WITHOUT_TIME = struct.Struct(">qq")  # written before the partition's time was kept


def _live(raw: bytes, oldest: int) -> Sighting | None:
    """A stored value as a sighting, or None if seen before ``oldest``: outside the horizon, a
    key is a new event for all purposes."""
    offset, index, seen_at, digest, epoch = _VALUE.unpack(raw)
    return None if seen_at < oldest else Sighting(offset, index, seen_at, digest, epoch)


class RocksDedupeStore:
    def __init__(self, path: Path, horizon_seconds: int):
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Each flush process holds a store, and its memtables count in the worker's RSS: 16 MB
        # instead of 32 lowered two flush processes' summed peak by about 20 MB (1M ids, four
        # paired runs) at the same CPU per key written and looked up (2.5-3.0 us either way).
        options.set_write_buffer_size(16 * 1024 * 1024)
        # Most lookups are of new keys, which RocksDB without a filter confirms missing by
        # reading index and data blocks at every level: a bloom filter (10 bits per key, about
        # 1% false positives) answers most of them from memory. The block cache, bounded, holds
        # data blocks only. Each table's index and filter stay with the open table instead,
        # about 2 MB per 1M keys (off the Python heap): held in the cache, they were evicted
        # by the data blocks of lookups that hit (repeats, replays) once the store outgrew the
        # cache, and every lookup read them back whole. `bench --dedupe-store` (1M keys, 20,000
        # random lookups, 2026-12-05): 121.4 us per stored key and 2.5 per new key with them in
        # the cache, 7.2-7.6 and 1.0 without.
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_cache_index_and_filter_blocks(False)
        options.set_block_based_table_factory(table)
        # A flush's lookups mostly miss, and the keys of recent flushes are still in the
        # memtable, a skip list that a miss searches to the bottom: a whole-key bloom filter
        # over it (a tenth of the write buffer) answers most misses without that search.
        options.set_memtable_prefix_bloom_ratio(0.1)
        options.set_memtable_whole_key_filtering(True)
        self._db = Rdict(str(path), options)
        self._path = path
        self.horizon_seconds = horizon_seconds
        self._key_prefixes: dict[tuple[str, int], bytes] = {}
        # Held by each write of record() and by each purge commit: the purge decides from values
        # it read earlier, so it reads its candidates again under this lock, and a sighting that
        # a flush wrote meanwhile (a key counted again past the horizon) is not deleted.
        self._writes = threading.Lock()

    @staticmethod
    def _scope(topic: str, partition: int) -> bytes:
        return f"{topic}\0{partition}\0".encode()

    def key(self, topic: str, partition: int, source: str, event_id: str) -> bytes:
        # Built for every event a flush judges: the partition's part is formatted once.
        prefix = self._key_prefixes.get((topic, partition))
        if prefix is None:
            prefix = self._key_prefixes[(topic, partition)] = b"k" + self._scope(topic, partition)
        return prefix + orjson.dumps((source, event_id))

    def get(self, key: bytes, now: int) -> Sighting | None:
        raw = self._db.get(key)
        return None if raw is None else _live(raw, now - self.horizon_seconds)

    def get_many(self, keys: list[bytes], now: int) -> list[Sighting | None]:
        """:meth:`get` of each key, in one multi-get: a flush asks for every event of a record
        at once, and one call per key cost more than RocksDB's lookup of it (100 new keys at a
        time in a 1M-key store: 0.30-0.38 us per key, against 0.48-0.54 one by one)."""
        oldest = now - self.horizon_seconds
        # A list of keys (the stubs want the wider element type) gets a list back.
        found = cast(list[Sighting | bytes | None], self._db.get(cast(list[str | int | float | bytes | bool], keys)))
        for position, raw in enumerate(found):
            if raw is not None:
                found[position] = _live(cast(bytes, raw), oldest)
        return cast(list[Sighting | None], found)

    def record(
        self,
        topic: str,
        partition: int,
        entries: Iterable[tuple[bytes, Sighting]],
        through_offset: int,
        epoch: int = 0,
    ) -> None:
        """Write the keys, then advance the epoch's high-water mark.

        rocksdict holds the GIL through a write (7-13 ms per 22,000 keys, measured), and the
        worker's event loop answers checks meanwhile, so the keys go in writes of at most
        ``WRITE_CHUNK_KEYS``. The high-water mark goes in the last write, with the last keys.
        A crash between writes leaves some keys under the old mark. The sink writes this cache
        after their events landed in ClickHouse, so those keys are true: a replay of their
        record matches them at its own position (a new verdict, see ``judge``), and the
        backfill at the next start rewrites them with the same values."""
        newest = self.partition_time(topic, partition)
        newest_here = -1  # no key yet
        pack = _VALUE.pack
        batch = WriteBatch(raw_mode=True)
        put = batch.put
        in_batch = 0
        # Runs for every key a flush writes: names taken once, and the newest time kept by a
        # comparison rather than max() per key.
        for key, s in entries:
            seen_at = s.seen_at
            put(key, pack(s.offset, s.index, seen_at, s.payload_hash, s.log_epoch))
            if seen_at > newest_here:
                newest_here = seen_at
            in_batch += 1
            if in_batch == WRITE_CHUNK_KEYS:
                with self._writes:
                    self._db.write(batch)
                batch = WriteBatch(raw_mode=True)
                put = batch.put
                in_batch = 0
        if newest_here >= 0 and (newest is None or newest_here > newest):
            newest = newest_here
        unknown = -1  # no key landed yet: nothing to purge
        stored_newest = unknown if newest is None else newest
        batch.put(b"h" + self._scope(topic, partition), _HWM.pack(epoch, through_offset, stored_newest))
        with self._writes:
            self._db.write(batch)

    def _high_water_record(self, scope: bytes) -> tuple[int, int, int | None] | None:
        raw = self._db.get(b"h" + scope)
        if raw is None:
            return None
        if len(raw) == _HWM_WITHOUT_TIME.size:
            return (*_HWM_WITHOUT_TIME.unpack(raw), None)
        epoch, offset, newest = _HWM.unpack(raw)
        return epoch, offset, (newest if newest >= 0 else None)

    def high_water(self, topic: str, partition: int) -> tuple[int, int] | None:
        """The (epoch, offset) through which this cache holds every key, if any."""
        found = self._high_water_record(self._scope(topic, partition))
        return None if found is None else found[:2]

    def partition_time(self, topic: str, partition: int) -> int | None:
        """The newest broker time (seconds) of a key this partition recorded; None if unknown."""
        found = self._high_water_record(self._scope(topic, partition))
        return None if found is None else found[2]

    def forget_partition(self, topic: str, partition: int) -> None:
        scope = self._scope(topic, partition)
        self._db.delete_range(b"k" + scope, b"k" + scope + b"\xff")
        self._db.delete(b"h" + scope)

    def purge_expired(self, chunk: int = 50_000) -> int:
        """Drop each partition's keys older than the horizon before that partition's newest
        broker time, then compact so the disk shrinks as well; returns how many.

        A record is judged against its own broker time (see :meth:`get`), so this changes no
        verdict for a record stamped no older than its partition's newest. One stamped older
        (producer timestamps out of order) may find a key at its horizon's edge purged, and
        count as new. A partition whose time is unknown is left alone. Run it off the event
        loop: it reads every key. It may run beside a flush's :meth:`record` in another thread
        (the in-process engine does not hold the sink's lock for it): each chunk of keys is read
        again under the store's write lock before it is deleted."""
        cutoffs: dict[bytes, int | None] = {}
        purged = 0
        candidates: list[tuple[bytes, int]] = []  # (key, cutoff of its partition)
        for key, value in self._db.items(from_key=b"k"):
            key = cast(bytes, key)  # raw mode: every key is bytes
            if key[:1] != b"k":
                break
            scope = key[1 : key.index(b"\0", key.index(b"\0") + 1) + 1]  # b"<topic>\0<partition>\0"
            if scope not in cutoffs:
                found = self._high_water_record(scope)
                newest = None if found is None else found[2]
                cutoffs[scope] = None if newest is None else newest - self.horizon_seconds
            cutoff = cutoffs[scope]
            if cutoff is not None and _VALUE.unpack(value)[2] < cutoff:
                candidates.append((key, cutoff))
                if len(candidates) == chunk:
                    purged += self._delete_still_expired(candidates)
                    candidates = []
        purged += self._delete_still_expired(candidates)
        if purged:
            self._db.compact_range(b"k", b"l")
        return purged

    def _delete_still_expired(self, candidates: list[tuple[bytes, int]]) -> int:
        # Read again under the write lock: the iteration above may have read a key before a
        # flush (in another thread, in the in-process engine) recorded it anew; deleting it by
        # key would lose that sighting, and a later repeat of the event would count again.
        if not candidates:
            return 0
        batch = WriteBatch(raw_mode=True)
        deleted = 0
        with self._writes:
            keys = [key for key, _ in candidates]
            current = cast(list[bytes | None], self._db.get(cast(list[str | int | float | bytes | bool], keys)))
            for (key, cutoff), raw in zip(candidates, current, strict=True):
                if raw is not None and _VALUE.unpack(raw)[2] < cutoff:
                    batch.delete(key)
                    deleted += 1
            self._db.write(batch)
        return deleted

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._path.iterdir() if p.is_file())

    def close(self) -> None:
        self._db.close()
