"""``bastionary bench --dedupe-store``: the dedupe cache alone, at the size a horizon holds.

The throughput phases write each id once and look up mostly new ones, in a store that is
small by the end of a run. A store that holds a horizon of ids is where lookups of stored
keys (repeats, a replayed flush, a producer's retries) meet the store's layout on disk: this
writes ``ids`` keys the way flushes write them (22,000 per write, keys as the planner builds
them) and then times lookups of random stored keys and of new keys, one at a time as a flush
makes them. Figures are microseconds per lookup by the clock; nothing else runs.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from hashlib import blake2b
from pathlib import Path
from typing import Any

from bastionary.dedupe import Sighting
from bastionary.dedupe.rocksdb_store import RocksDedupeStore

TOPIC = "bench-dedupe.usage.events"
KEYS_PER_FLUSH = 22_000  # about one batch flush
SEEN_AT = 1_700_000_000
_DIGEST = bytes(range(16))


def run_dedupe_store(ids: int, lookups: int = 20_000, seed: int = 7) -> dict[str, Any]:
    """Write ``ids`` keys to a fresh store, then time ``lookups`` lookups of each kind; the
    store is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="bastionary-dedupe-store-"))
    chooser = random.Random(seed)
    try:
        store = RocksDedupeStore(root / "dedupe", horizon_seconds=10 * 365 * 86_400)
        try:
            written = 0.0  # the writes alone: keys and sightings are built outside the clock
            for first in range(0, ids, KEYS_PER_FLUSH):
                numbers = range(first, min(ids, first + KEYS_PER_FLUSH))
                entries = [(_key(store, n), Sighting(n, 0, SEEN_AT, _DIGEST, 1)) for n in numbers]
                started = time.perf_counter()
                store.record(TOPIC, 0, entries, numbers[-1], epoch=1)
                written += time.perf_counter() - started
            sample = [chooser.randrange(ids) for _ in range(min(lookups, ids))]
            stored = _timed(store, [_key(store, n) for n in sample], expect_found=True)
            new = _timed(store, [_key(store, ids + n) for n in sample], expect_found=False)
            disk = store.disk_bytes()
        finally:
            store.close()
        return {
            "ids": ids,
            "lookups": len(sample),
            "write_us_per_key": round(1e6 * written / max(ids, 1), 2),
            "stored_key_us_per_lookup": stored,
            "new_key_us_per_lookup": new,
            "disk_bytes_per_id": round(disk / max(ids, 1), 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _key(store: RocksDedupeStore, n: int) -> bytes:
    """Id ``n`` as producers send ids: random-looking (a UUID's 32 hex digits), so the keys
    compress on disk as real ones do, and found again from ``n`` alone."""
    return store.key(TOPIC, 0, f"//producer/{n % 7}", blake2b(n.to_bytes(8, "big"), digest_size=16).hexdigest())


def _timed(store: RocksDedupeStore, keys: list[bytes], expect_found: bool) -> float:
    started = time.perf_counter()
    found = sum(1 for key in keys if store.get(key, SEEN_AT) is not None)
    spent = time.perf_counter() - started
    if found != (len(keys) if expect_found else 0):
        raise AssertionError(f"{found} of {len(keys)} keys found; expected {'all' if expect_found else 'none'}")
    return round(1e6 * spent / max(len(keys), 1), 2)


def render_dedupe_store(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{result['ids']:,} ids written, {result['lookups']:,} lookups of each kind, one at a time",
            f"write                {result['write_us_per_key']:>8.2f} us per key",
            f"lookup, stored key   {result['stored_key_us_per_lookup']:>8.2f} us",
            f"lookup, new key      {result['new_key_us_per_lookup']:>8.2f} us",
            f"on disk              {result['disk_bytes_per_id']:>8.1f} bytes per id",
        ]
    )
