"""Dedupe: the replay-safe verdict, and the RocksDB cache that feeds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.dedupe import Sighting, Verdict, judge
from bastionary.dedupe.rocksdb_store import WRITE_CHUNK_KEYS, RocksDedupeStore

H1 = bytes(range(16))
H2 = bytes(range(1, 17))
NOW = 1_714_564_800  # 2024-05-01T12:00:00Z
DAY = 86_400


def sighting(offset: int, index: int = 0, payload_hash: bytes = H1, *, epoch: int = 0, seen_at: int = NOW):
    return Sighting(offset, index, seen_at, payload_hash, epoch)


# --- judge -----------------------------------------------------------------------------


def test_first_sighting_is_new():
    assert judge(None, sighting(5)) is Verdict.NEW


def test_replay_of_the_same_record_member_is_new():
    first = sighting(5, 2, H1, seen_at=NOW)
    replay = sighting(5, 2, H1, seen_at=NOW + 60)  # redelivered after a crash
    assert judge(first, replay) is Verdict.NEW


def test_replay_is_new_even_if_the_hash_differs():
    # The position identifies the record; a changed hash for the same member cannot be a new event.
    assert judge(sighting(5, 2, H1), sighting(5, 2, H2)) is Verdict.NEW


def test_later_identical_event_is_a_duplicate():
    assert judge(sighting(5), sighting(9)) is Verdict.DUPLICATE
    assert judge(sighting(5, 0), sighting(5, 1)) is Verdict.DUPLICATE  # twice in one batch


def test_later_event_with_another_payload_is_a_conflict():
    assert judge(sighting(5, 0, H1), sighting(9, 0, H2)) is Verdict.CONFLICT
    assert judge(sighting(5, 0, H1), sighting(5, 3, H2)) is Verdict.CONFLICT


def test_previous_after_current_is_treated_as_new():
    assert judge(sighting(9), sighting(5)) is Verdict.NEW
    assert judge(sighting(9, 0, H1), sighting(5, 0, H2)) is Verdict.NEW


def test_log_epoch_orders_before_offset():
    # The topic was recreated: offsets restart from 0 under a higher epoch.
    old = sighting(1_000, epoch=0)
    assert judge(old, sighting(0, epoch=1)) is Verdict.DUPLICATE
    assert judge(old, sighting(0, payload_hash=H2, epoch=1)) is Verdict.CONFLICT
    assert judge(sighting(0, epoch=1), sighting(1_000, epoch=0)) is Verdict.NEW
    assert judge(sighting(7, epoch=1), sighting(7, epoch=0)) is Verdict.NEW


def test_seen_at_does_not_affect_the_verdict():
    assert judge(sighting(5, seen_at=NOW), sighting(9, seen_at=NOW - DAY)) is Verdict.DUPLICATE


# --- RocksDedupeStore ------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    s = RocksDedupeStore(tmp_path / "dedupe", horizon_seconds=35 * DAY)
    yield s
    s.close()


def test_record_then_get(store: RocksDedupeStore):
    key = store.key("usage", 0, "//src", "evt-1")
    assert store.get(key, NOW) is None
    seen = Sighting(offset=42, index=3, seen_at=NOW, payload_hash=H1, log_epoch=2)
    store.record("usage", 0, [(key, seen)], through_offset=42, epoch=2)
    assert store.get(key, NOW) == seen
    assert store.get(store.key("usage", 0, "//src", "evt-2"), NOW) is None


def test_keys_are_scoped_by_topic_and_partition_and_unambiguous(store: RocksDedupeStore):
    keys = {
        store.key("usage", 0, "s", "id"),
        store.key("usage", 1, "s", "id"),
        store.key("usage2", 0, "s", "id"),
        store.key("usage", 0, "s:x", "id"),
        store.key("usage", 0, "s", "x:id"),
        store.key("usage", 0, "s\0", "id"),
        store.key("usage", 0, "s", "\0id"),
    }
    assert len(keys) == 7


def test_keys_keep_the_layout_on_disk_however_often_a_partition_is_asked(store: RocksDedupeStore):
    """Keys written by earlier versions must still be found: the layout is the module's."""
    for _ in range(2):  # the second time, the partition's part comes from the store's cache
        assert store.key("usage", 7, "//src", "evt-1") == b'kusage\x007\x00["//src","evt-1"]'
        assert store.key("usage", 8, "//src", "evt-1") == b'kusage\x008\x00["//src","evt-1"]'


def test_high_water_tracks_the_latest_record_call(store: RocksDedupeStore):
    assert store.high_water("usage", 0) is None
    store.record("usage", 0, [], through_offset=10)
    assert store.high_water("usage", 0) == (0, 10)
    store.record("usage", 0, [(store.key("usage", 0, "s", "a"), sighting(11))], through_offset=11)
    assert store.high_water("usage", 0) == (0, 11)
    store.record("usage", 0, [], through_offset=3, epoch=1)
    assert store.high_water("usage", 0) == (1, 3)
    assert store.high_water("usage", 1) is None
    assert store.high_water("other", 0) is None


def test_record_overwrites_an_existing_key(store: RocksDedupeStore):
    key = store.key("usage", 0, "s", "a")
    store.record("usage", 0, [(key, sighting(1, payload_hash=H1))], through_offset=1)
    store.record("usage", 0, [(key, sighting(2, payload_hash=H2))], through_offset=2)
    assert store.get(key, NOW) == sighting(2, payload_hash=H2)


def test_a_record_larger_than_one_write_lands_whole(store: RocksDedupeStore):
    count = 2 * WRITE_CHUNK_KEYS + 1
    entries = [(store.key("usage", 0, "s", f"e{i}"), sighting(i)) for i in range(count)]
    store.record("usage", 0, entries, through_offset=count - 1)
    assert store.high_water("usage", 0) == (0, count - 1)
    assert all(store.get(key, NOW) == expected for key, expected in entries)


class _CrashAfterWrites:
    """The store's database, dying (as a SIGKILL would) once it has taken ``writes`` writes."""

    def __init__(self, db: object, writes: int):
        self._db = db
        self._left = writes

    def write(self, batch: object) -> None:
        if self._left == 0:
            raise KeyboardInterrupt("killed between writes")
        self._left -= 1
        self._db.write(batch)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_crash_between_writes_keeps_the_old_mark_and_replays_as_new(store: RocksDedupeStore):
    store.record("usage", 0, [], through_offset=9)
    entries = [(store.key("usage", 0, "s", f"e{i}"), sighting(10, index=i)) for i in range(WRITE_CHUNK_KEYS + 5)]
    real = store._db
    store._db = _CrashAfterWrites(real, writes=1)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        store.record("usage", 0, entries, through_offset=10)
    store._db = real
    assert store.high_water("usage", 0) == (0, 9)  # offset 10 is replayed from the log
    landed = [(key, s) for key, s in entries if store.get(key, NOW) is not None]
    assert len(landed) == WRITE_CHUNK_KEYS
    # The replayed record meets its own sightings: every member counts again, none as a repeat.
    for key, first in landed:
        assert judge(store.get(key, NOW), sighting(10, index=first.index, seen_at=NOW + 60)) is Verdict.NEW


def test_forget_partition_drops_only_that_partition(store: RocksDedupeStore):
    def fill(topic: str, partition: int) -> bytes:
        key = store.key(topic, partition, "s", "a")
        store.record(topic, partition, [(key, sighting(1))], through_offset=1)
        return key

    gone = fill("usage", 1)
    kept = [fill("usage", 10), fill("usage", 0), fill("usage1", 1), fill("usag", 1)]
    store.forget_partition("usage", 1)
    assert store.get(gone, NOW) is None
    assert store.high_water("usage", 1) is None
    for key in kept:
        assert store.get(key, NOW) == sighting(1)
    assert store.high_water("usage", 10) == (0, 1)
    assert store.high_water("usage1", 1) == (0, 1)
    store.forget_partition("never-seen", 0)  # a no-op, not an error


def test_get_expires_entries_beyond_the_horizon(tmp_path: Path):
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    try:
        key = store.key("usage", 0, "s", "a")
        store.record("usage", 0, [(key, sighting(1, seen_at=1_000))], through_offset=1)
        assert store.get(key, now=1_000) is not None
        assert store.get(key, now=1_100) is not None  # exactly at the horizon: still remembered
        assert store.get(key, now=1_101) is None
        assert store.get(key, now=500) is not None  # a clock behind the entry never expires it
    finally:
        store.close()


def test_get_many_answers_as_get_does_key_by_key(tmp_path: Path):
    """The multi-get a flush uses per record: missing, expired, repeated and present keys, in
    the order asked, each as :meth:`get` answers it at the same time."""
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    partitions = iter(range(1_000_000))  # a fresh partition per example: examples share the store

    @settings(max_examples=60, deadline=None)
    @given(
        stored=st.dictionaries(st.text(max_size=4), st.integers(900, 1_100), max_size=12),
        asked=st.lists(st.text(max_size=4), max_size=20),
        now=st.integers(800, 1_300),
    )
    def check(stored: dict[str, int], asked: list[str], now: int) -> None:
        partition = next(partitions)
        entries = [
            (store.key("usage", partition, "s", ident), sighting(i, seen_at=t))
            for i, (ident, t) in enumerate(stored.items())
        ]
        store.record("usage", partition, entries, through_offset=len(entries))
        keys = [store.key("usage", partition, "s", ident) for ident in [*asked, *stored]]
        assert store.get_many(keys, now) == [store.get(key, now) for key in keys]

    try:
        check()
        assert store.get_many([], NOW) == []
    finally:
        store.close()


def test_purge_expired_drops_keys_past_the_horizon_of_their_partitions_newest_time(tmp_path: Path):
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    try:
        old = store.key("usage", 0, "s", "old")
        edge = store.key("usage", 0, "s", "edge")
        fresh = store.key("usage", 0, "s", "fresh")
        behind = store.key("usage", 1, "s", "behind")  # partition 1's own time is 899
        store.record("usage", 0, [(old, sighting(1, seen_at=800)), (edge, sighting(2, seen_at=900))], 2)
        store.record("usage", 1, [(behind, sighting(1, seen_at=899))], 1)
        store.record("usage", 0, [(fresh, sighting(3, seen_at=1_000))], 3)
        assert store.partition_time("usage", 0) == 1_000
        assert store.partition_time("usage", 1) == 899

        assert store.purge_expired() == 1
        assert store.get(old, now=0) is None  # gone, not merely hidden by the horizon
        assert store.get(edge, now=1_000) == sighting(2, seen_at=900)
        assert store.get(fresh, now=1_000) == sighting(3, seen_at=1_000)
        assert store.get(behind, now=899) == sighting(1, seen_at=899)
        assert store.high_water("usage", 0) == (0, 3)  # high-water marks are not keys
        assert store.high_water("usage", 1) == (0, 1)
        assert store.purge_expired() == 0
    finally:
        store.close()


def test_a_partition_s_time_is_the_newest_it_recorded_whatever_the_order(tmp_path: Path):
    """Across writes: an older record later, and a write without keys, leave it where it was;
    within one write it is the newest of its keys, wherever that one is, and a time of 0 counts."""
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    try:
        store.record("usage", 0, [(store.key("usage", 0, "s", "zero"), sighting(1, seen_at=0))], 1)
        assert store.partition_time("usage", 0) == 0
        keys = [(store.key("usage", 0, "s", str(n)), sighting(n, seen_at=t)) for n, t in ((2, 700), (3, 900), (4, 800))]
        store.record("usage", 0, keys, 4)
        assert store.partition_time("usage", 0) == 900
        store.record("usage", 0, [(store.key("usage", 0, "s", "late"), sighting(5, seen_at=600))], 5)
        store.record("usage", 0, [], 6)
        assert store.partition_time("usage", 0) == 900
        assert store.high_water("usage", 0) == (0, 6)
        store.record("usage", 1, [], 1)  # no key yet: no time
        assert store.partition_time("usage", 1) is None
    finally:
        store.close()


def test_the_wall_clock_never_expires_a_key(tmp_path: Path):
    """Usage re-imported with broker times far behind the wall clock keeps its repeats caught."""
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    try:
        key = store.key("usage", 0, "s", "a")
        store.record("usage", 0, [(key, sighting(1, seen_at=5))], 1)
        assert store.purge_expired() == 0
        assert store.get(key, now=100) == sighting(1, seen_at=5)
    finally:
        store.close()


def test_a_high_water_mark_written_before_partition_times_leaves_its_keys_alone(tmp_path: Path):
    import struct

    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    try:
        key = store.key("usage", 0, "s", "a")
        store.record("usage", 0, [(key, sighting(1, seen_at=5))], 1)
        store._db[b"husage\x000\x00"] = struct.pack(">qq", 0, 1)  # the old format: no time
        assert store.high_water("usage", 0) == (0, 1)
        assert store.partition_time("usage", 0) is None
        assert store.purge_expired() == 0
        store.record("usage", 0, [(store.key("usage", 0, "s", "b"), sighting(2, seen_at=500))], 2)
        assert store.partition_time("usage", 0) == 500
        assert store.purge_expired() == 1
    finally:
        store.close()


def test_entries_survive_a_reopen(tmp_path: Path):
    path = tmp_path / "d"
    store = RocksDedupeStore(path, horizon_seconds=DAY)
    key = store.key("usage", 3, "s", "a")
    store.record("usage", 3, [(key, sighting(7, 1, H2, epoch=4))], through_offset=9, epoch=4)
    store.close()

    reopened = RocksDedupeStore(path, horizon_seconds=DAY)
    try:
        assert reopened.get(key, NOW) == sighting(7, 1, H2, epoch=4)
        assert reopened.high_water("usage", 3) == (4, 9)
    finally:
        reopened.close()


def test_scheduled_purges_keep_the_disk_bounded_under_a_short_horizon(tmp_path: Path):
    """Every round writes 20,000 new ids; the purge after it drops the ones past the horizon.
    Without purging the cache would grow by every round; with it the disk stays flat."""
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=10)
    try:
        sizes = []
        for round_no in range(8):
            now = 1_000 + round_no * 100  # each round is past the previous one's horizon
            entries = [(store.key("usage", 0, "s", f"{round_no}-{i}"), sighting(i, seen_at=now)) for i in range(20_000)]
            store.record("usage", 0, entries, through_offset=round_no)
            purged = store.purge_expired()
            assert purged == (20_000 if round_no else 0)
            sizes.append(store.disk_bytes())
        # Bounded: the last rounds are no bigger than the second (one round's ids and the log).
        assert max(sizes[4:]) <= 1.5 * sizes[1], sizes
    finally:
        store.close()


def test_each_table_keeps_its_index_and_filter_out_of_the_block_cache(store: RocksDedupeStore):
    """In the bounded block cache, a table's index and bloom filter were evicted by the data
    blocks of lookups that hit, and read back whole by the next lookup: 64-82 us a lookup in a
    1M-key store. Held with the open table (what ``estimate-table-readers-mem`` counts), they
    stay; 50,000 keys' filter alone is about 60 KB, where the cached layout reports about 2."""
    keys = [(store.key("usage", 0, "s", f"evt-{n}"), sighting(n, seen_at=NOW)) for n in range(50_000)]
    store.record("usage", 0, keys, through_offset=50_000)
    store._db.flush()  # the memtable becomes a table
    assert int(store._db.property_value("rocksdb.estimate-table-readers-mem") or 0) > 50_000
    assert store.get(keys[123][0], NOW) == sighting(123, seen_at=NOW)


def test_a_purge_keeps_a_key_a_flush_recorded_anew_while_the_purge_read_the_store(tmp_path: Path):
    """The in-process engine runs the purge in one thread and a flush's write in another. A key
    past the horizon, read by the purge and then recorded anew by a flush (its event counted
    again past the horizon), keeps its new sighting; before, the purge deleted it by key, and
    a repeat of that event within the new horizon counted a third time."""
    store = RocksDedupeStore(tmp_path / "d", horizon_seconds=100)
    try:
        again = store.key("usage", 0, "a", "again")  # sorts before the others: read first
        store.record("usage", 0, [(again, sighting(1, seen_at=800))], 1)
        store.record(
            "usage", 0, [(store.key("usage", 0, "b", f"e{i}"), sighting(2 + i, seen_at=800)) for i in range(3)], 4
        )
        store.record("usage", 0, [(store.key("usage", 0, "c", "now"), sighting(5, seen_at=1_000))], 5)
        anew = sighting(6, seen_at=1_010)
        real = store._db

        class FlushWritesDuringTheScan:
            def __getattr__(self, name: str):
                return getattr(real, name)

            def items(self, **kwargs):
                for position, item in enumerate(real.items(**kwargs)):
                    yield item
                    if position == 0:
                        store._db = real  # the flush's write goes straight to the store
                        store.record("usage", 0, [(again, anew)], 6)
                        store._db = self

        store._db = FlushWritesDuringTheScan()
        try:
            purged = store.purge_expired()
        finally:
            store._db = real
        assert purged == 3  # the three left at 800; not the key recorded anew
        assert store.get(again, now=1_020) == anew
    finally:
        store.close()
