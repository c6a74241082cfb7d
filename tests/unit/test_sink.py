"""The usage sink without a broker or a database: fakes for ClickHouse and the broker's log.

What is checked here: no record, whatever its bytes, makes a flush raise; a bug of ours
costs one record; a replaced log is caught at recovery, before a flush and on a timer, and
the new log lands under a new epoch with tokens that never collide with the old ones.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bastionary.catalog import parse_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.ingest.errors import ErrorClass
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.logs import record_fingerprint
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import Admission, InboundRecord
from bastionary.metering.sink import FlushRefused, SinkConfig, UsageSink
from tests.unit.sink_fakes import FakeLog, FakeStore

TOPIC = "usage.events"
NOW_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
CATALOG = parse_catalog(
    {"meters": [{"key": "tokens", "event_type": "llm", "aggregation": "SUM", "value_property": "$.tokens"}]}
)


def event_record(
    offset: int, event_id: str, tokens: int = 1, *, partition: int = 0, ts_ms: int = NOW_MS, source: str = "test"
) -> InboundRecord:
    body = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": "llm",
        "subject": "cust-1",
        "time": "2026-02-28T23:59:00Z",
        "data": {"tokens": tokens},
    }
    return InboundRecord(TOPIC, partition, offset, ts_ms, b"cust-1", json.dumps(body).encode(), [])


def make_sink(
    tmp_path, store=None, log=None, meters=None, floor: int = 1, rewind_retry: float = 10.0
) -> tuple[UsageSink, FakeStore, FakeLog, list]:
    store = store or FakeStore()
    log = log or FakeLog()
    letters: list = []

    async def send(batch):
        letters.extend(batch)

    config = SinkConfig("w1", floor, rewind_retry)
    dedupe = RocksDedupeStore(tmp_path / f"dedupe-{len(list(tmp_path.iterdir()))}", 35 * 86400)
    limits = RecordLimits(1 << 20, 100, timedelta(minutes=5))
    engine = LocalFlushEngine(store, dedupe, meters or MeterIndex(CATALOG.meters), limits, timedelta(days=35))
    sink = UsageSink(engine, send, config, log)
    return sink, store, log, letters


async def admit_all(sink: UsageSink, records: list[InboundRecord]) -> list[Admission]:
    return [await sink.admit(r) for r in records]


# --- no record stops the pipeline ------------------------------------------------------

header_names = st.one_of(st.text(max_size=12), st.sampled_from(["ce_specversion", "ce_subject", "ce_\udcff", "\udcfe"]))
headers = st.lists(st.tuples(header_names, st.one_of(st.none(), st.binary(max_size=20))), max_size=4)
values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.builds(
        lambda e: json.dumps(e).encode(),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
            ),
            max_leaves=20,
        ),
    ),
    st.builds(lambda i, t: event_record(0, i, t).value, st.text(max_size=5), st.integers()),
    st.just(b"[" * 300 + b"]" * 300),
)


# A flush's worth of records: (key, value, headers, broker timestamp) each.
hostile_records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=8)),
        values,
        headers,
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(hostile_records)
def test_whatever_a_record_holds_the_flush_lands_or_dead_letters_it(tmp_path, records):
    async def scenario():
        sink, store, _, letters = make_sink(tmp_path)
        inbound = [
            InboundRecord(TOPIC, 0, i, ts, key, value, list(hs)) for i, (key, value, hs, ts) in enumerate(records)
        ]
        await admit_all(sink, inbound)
        landed = await sink.flush()
        assert [r.offset for r in landed] == list(range(len(records)))
        for letter in letters:  # what the DLQ producer will be handed must be encodable
            for name, value in letter.headers:
                name.encode("utf-8")
                assert value is None or isinstance(value, bytes)
            assert letter.code in ErrorClass
        marker = store.markers[-1]
        assert marker[5] == len(records)  # every record counted in the marker

    asyncio.run(scenario())


def test_a_bug_of_ours_costs_one_record_not_the_partition(tmp_path):
    class Buggy(MeterIndex):
        def readings(self, event, exact_data, index):
            if event.id == "poison":
                raise ZeroDivisionError("a bug")
            return super().readings(event, exact_data, index)

    async def scenario():
        sink, store, _, letters = make_sink(tmp_path, meters=Buggy(CATALOG.meters))
        await admit_all(sink, [event_record(0, "a"), event_record(1, "poison"), event_record(2, "b")])
        with structlog.testing.capture_logs() as logs:
            await sink.flush()
        assert store.total() == 2
        (letter,) = letters
        headers = dict(letter.headers)
        assert letter.code is ErrorClass.INTERNAL_ERROR
        assert headers["error.exception"] == b"ZeroDivisionError" and headers["source.offset"] == b"1"
        assert any(entry["log_level"] == "error" for entry in logs)

    asyncio.run(scenario())


def test_an_event_without_a_dedupe_key_costs_that_event_not_the_partition(tmp_path):
    class Keyless(RocksDedupeStore):
        def key(self, topic, partition, source, event_id):
            if event_id == "poison":
                raise ValueError("no key for this one")
            return super().key(topic, partition, source, event_id)

    async def scenario():
        sink, store, _, letters = make_sink(tmp_path)
        sink.engine.dedupe = sink.engine.planner.dedupe = Keyless(tmp_path / "keyless", 35 * 86400)
        await admit_all(sink, [event_record(0, "a"), event_record(1, "poison"), event_record(2, "b")])
        with structlog.testing.capture_logs() as logs:
            landed = await sink.flush()
        assert [r.offset for r in landed] == [0, 1, 2] and store.total() == 2
        (letter,) = letters
        assert letter.code is ErrorClass.INTERNAL_ERROR and dict(letter.headers)["source.offset"] == b"1"
        assert any(entry["log_level"] == "error" for entry in logs)

    asyncio.run(scenario())


def test_header_names_that_were_not_utf8_reach_the_dead_letter_escaped(tmp_path):
    async def scenario():
        sink, _, _, letters = make_sink(tmp_path)
        record = InboundRecord(TOPIC, 0, 0, NOW_MS, None, b"nope", [("x-\udcff", b"v"), ("y", None)])
        await sink.admit(record)
        await sink.flush()
        (letter,) = letters
        assert ("x-\\udcff", b"v") in letter.headers and ("y", None) in letter.headers

    asyncio.run(scenario())


# --- a replaced log is detected, not trusted ------------------------------------------


def test_a_log_replaced_while_the_worker_was_down_is_landed_from_its_start(tmp_path):
    async def scenario():
        first, store, log, _ = make_sink(tmp_path)
        old = [event_record(i, f"old-{i}") for i in range(10)]
        log.hold(old)
        await admit_all(first, old)
        await first.flush()
        # The broker comes back empty and 12 new events are produced before a worker reads.
        new = [event_record(i, f"new-{i}", ts_ms=NOW_MS + 5000) for i in range(12)]
        log.replace(TOPIC, 0, new)
        second, _, _, _ = make_sink(tmp_path, store=store, log=log)
        with structlog.testing.capture_logs() as logs:
            admissions = await admit_all(second, new)
        assert admissions == [Admission.BUFFERED] * 12  # none skipped as "already landed"
        await second.flush()
        assert store.total() == 22
        warning = next(e for e in logs if e["log_level"] == "warning")
        assert "replaced" in warning["event"] and warning["new_epoch"] > warning["old_epoch"]
        epochs = {m[1] for m in store.markers}
        assert len(epochs) == 2

    asyncio.run(scenario())


def test_a_log_replaced_under_a_running_worker_drops_the_batch_and_rewinds(tmp_path):
    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        old = [event_record(i, f"old-{i}") for i in range(10)]
        log.hold(old)
        await admit_all(sink, old)
        await sink.flush()
        # The consumer went on at offset 10 in a new log: offsets 0..9 of it were never read.
        new = [event_record(i, f"new-{i}", ts_ms=NOW_MS + 5000) for i in range(14)]
        log.replace(TOPIC, 0, new)
        await admit_all(sink, new[10:])
        assert await sink.flush() == []  # nothing lands on the old epoch's offsets
        assert log.rewinds == [(TOPIC, 0, 0)]
        assert store.total() == 10
        # Records fetched before the rewind took effect are stale: dropped, never acked.
        assert await sink.admit(new[12]) is Admission.STALE
        assert await admit_all(sink, new) == [Admission.BUFFERED] * 14
        await sink.flush()
        assert store.total() == 24
        assert len({token.split("@")[1].split("/")[0] for token in store.events}) == 2  # two epochs

    asyncio.run(scenario())


async def _landed_then_replaced_by_a_shorter_log(tmp_path):
    """A sink that landed 10 records of partition 0, whose log then holds 3 other records."""
    sink, store, log, _ = make_sink(tmp_path)
    old = [event_record(i, f"old-{i}") for i in range(10)]
    log.hold(old)
    await admit_all(sink, old)
    await sink.flush()
    log.replace(TOPIC, 0, [event_record(i, f"new-{i}", ts_ms=NOW_MS + 1) for i in range(3)])
    return sink, store, log


def test_a_shorter_log_is_caught_by_the_timer_even_with_nothing_to_flush(tmp_path):
    async def scenario():
        sink, _store, log = await _landed_then_replaced_by_a_shorter_log(tmp_path)
        await sink.check_logs()
        assert log.rewinds == [(TOPIC, 0, 0)]
        assert sink.status()[(TOPIC, 0)].rewinding

    asyncio.run(scenario())


def test_a_log_check_waits_for_a_flush_only_as_long_as_it_is_told(tmp_path):
    """A flush that holds the sink (a slow ClickHouse) is not a hung log check: past its wait
    the round returns having checked nothing, and the next round, with the lock free, checks.
    Before, the round waited for the flush, and rounds that waited past the stall timeout
    stopped the worker as if the broker were unreachable."""

    async def scenario():
        sink, _store, log = await _landed_then_replaced_by_a_shorter_log(tmp_path)
        async with sink.lock:  # a flush in progress
            await asyncio.wait_for(sink.check_logs(lock_wait=0.05), timeout=5)
            assert log.rewinds == []
        await sink.check_logs(lock_wait=0.05)
        assert log.rewinds == [(TOPIC, 0, 0)]

    asyncio.run(scenario())


def test_the_buffered_counts_follow_the_buffers_through_a_release_and_a_replaced_log(tmp_path):
    """The intake reads ``buffered()`` and ``buffered_bytes()`` after every record, so they are
    kept as counts, not summed from the buffers: every way a buffer empties must lower them."""

    def waiting(sink: UsageSink) -> tuple[int, int]:
        return sink.buffered(), sink.buffered_bytes()

    async def scenario():
        sink, _store, log, _ = make_sink(tmp_path)
        landed = [event_record(i, f"landed-{i}") for i in range(2)]
        first = [*landed, *(event_record(i, f"p0-{i}") for i in range(2, 7))]
        second = [event_record(i, f"p1-{i}", partition=1) for i in range(3)]
        log.hold(first + second)
        await admit_all(sink, landed)
        await sink.flush()  # an anchor, so that a replaced log can be told from this one
        assert waiting(sink) == (0, 0)
        await admit_all(sink, first[2:] + second)
        assert waiting(sink) == (8, sum(len(r.value) for r in first[2:] + second))
        await sink.release([(TOPIC, 1)])
        assert waiting(sink) == (5, sum(len(r.value) for r in first[2:]))
        log.replace(TOPIC, 0, [event_record(0, "new-0", ts_ms=NOW_MS + 1)])
        await sink.check_logs()  # the new log is read from its start: the buffer is dropped
        assert waiting(sink) == (0, 0)

    asyncio.run(scenario())


def test_repeats_across_a_replaced_log_still_count_once(tmp_path):
    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        old = [event_record(i, f"e-{i}") for i in range(5)]
        log.hold(old)
        await admit_all(sink, old)
        await sink.flush()
        resent = [event_record(i, f"e-{i}", ts_ms=NOW_MS + 9000) for i in range(8)]  # 5 repeats, 3 new
        log.replace(TOPIC, 0, resent)
        await admit_all(sink, resent[5:])
        await sink.flush()  # anchor gone: rewinds
        await admit_all(sink, resent)
        await sink.flush()
        assert store.total() == 8

    asyncio.run(scenario())


def test_a_marker_from_before_fingerprints_is_trusted_as_before(tmp_path):
    async def scenario():
        store = FakeStore()
        store.markers.append((TOPIC, 1, 0, 5, 9, 5, 5, 0, 0, "old", None, 0))  # last_fingerprint 0
        log = FakeLog()
        log.hold([event_record(i, f"x-{i}") for i in range(12)])
        sink, _, _, _ = make_sink(tmp_path, store=store, log=log)
        assert await sink.admit(event_record(3, "x-3")) is Admission.LANDED  # before the replayed range
        assert await sink.admit(event_record(5, "x-5")) is Admission.BUFFERED

    asyncio.run(scenario())


def test_an_unchanged_log_replays_the_last_flush_exactly(tmp_path):
    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(6)]
        log.hold(records)
        await admit_all(sink, records)
        await sink.flush()
        tokens = set(store.events)
        again, _, _, _ = make_sink(tmp_path, store=store, log=log)  # a crash before the ack
        assert await admit_all(again, records) == [Admission.BUFFERED] * 6
        await again.flush()
        assert set(store.events) == tokens and store.total() == 6

    asyncio.run(scenario())


@pytest.mark.parametrize("fingerprint_inputs", [(0, None, None), (1, b"", b""), (2**62, b"k", b"v" * 100)])
def test_fingerprints_are_never_zero_and_tell_records_apart(fingerprint_inputs):
    ts, key, value = fingerprint_inputs
    fp = record_fingerprint(ts, key, value)
    assert 0 < fp < 2**63
    assert fp != record_fingerprint(ts + 1, key, value)
    assert record_fingerprint(ts, None, b"") != record_fingerprint(ts, b"", None)


def test_an_assigned_partition_is_recovered_and_rewound_even_if_no_record_comes(tmp_path):
    """A consumer that resumes past the end of a new, shorter log reads nothing: the timer
    must find the partition without any record to trigger it."""

    async def scenario():
        _first, store, log = await _landed_then_replaced_by_a_shorter_log(tmp_path)
        second, _, _, _ = make_sink(tmp_path, store=store, log=log)
        await second.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 0)]
        await second.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 0)]  # once, until the retry delay has passed

    asyncio.run(scenario())


def test_a_partition_whose_records_stop_coming_is_read_on_from_what_landed(tmp_path):
    """Seen after a broker restart under load: the consumer took a rewound partition's first
    record and skipped the rest. The timer finds records in the log past what landed and none
    coming, and seeks to the next offset to land."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path, rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(24)]
        log.hold(records)
        await admit_all(sink, records[:1])
        await sink.flush()
        await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 1)]
        # What the seek delivers lands; a record delivered twice lands once.
        again = records[1:3] + records[2:3]
        assert await admit_all(sink, again) == [Admission.BUFFERED, Admission.BUFFERED, Admission.STALE]
        await admit_all(sink, records[3:])
        await sink.flush()
        assert store.total() == 24
        await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 1)]  # caught up: nothing to read on from

    asyncio.run(scenario())


def test_a_partition_that_is_merely_quiet_for_a_moment_is_left_alone(tmp_path):
    async def scenario():
        sink, _store, log, _ = make_sink(tmp_path)  # 10 s before a partition counts as stalled
        records = [event_record(i, f"e-{i}") for i in range(24)]
        log.hold(records)
        await admit_all(sink, records[:1])
        await sink.flush()
        await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == []

    asyncio.run(scenario())


def test_records_the_consumer_skipped_are_read_again_not_counted_as_landed(tmp_path):
    """Seen after a broker restart under load: the consumer delivered a new log's first
    record, then went on from an offset the old log had reached. A flush covers its range by
    its marker, so the skipped records would never have counted."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(50)]
        log.hold(records)
        assert await admit_all(sink, [records[0], records[48]]) == [Admission.BUFFERED, Admission.STALE]
        assert log.rewinds == [(TOPIC, 0, 1)]
        assert await admit_all(sink, records[1:]) == [Admission.BUFFERED] * 49
        await sink.flush()
        assert store.total() == 50

    asyncio.run(scenario())


def test_a_rewind_whose_target_retention_removed_reads_on_from_the_log_s_start(tmp_path):
    """The sink rewinds to the first skipped record; retention deletes it before the consumer
    gets there, so the consumer resets to the log's start. Asked again for the same target,
    the partition waited for it for ever (every record STALE, a rewind every retry). The retry
    probes the target, and reads on from the log's start, with an error naming the loss."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path, rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(50)]
        log.hold(records)
        assert await admit_all(sink, [records[0], records[20]]) == [Admission.BUFFERED, Admission.STALE]
        assert log.rewinds == [(TOPIC, 0, 1)]
        log.retain_from(TOPIC, 0, 15)  # 1-14 are gone before the consumer reads them again
        assert await admit_all(sink, [records[15]]) == [Admission.STALE]  # the consumer's reset
        with capture_logs() as logs:
            await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 1), (TOPIC, 0, 15)]
        (lost,) = [entry for entry in logs if entry["log_level"] == "error"]
        assert (lost["rewind_target"], lost["log_start"], lost["lost_offsets"]) == (1, 15, 14)
        assert await admit_all(sink, records[15:]) == [Admission.BUFFERED] * 35
        await sink.flush()
        assert store.total() == 36  # 0, and 15-49: what the log still held

    asyncio.run(scenario())


def test_a_rewind_to_a_log_start_that_holds_no_record_reads_on_from_the_first_record(tmp_path):
    """Retention leaves the log starting at 15, but 15 and 16 hold no record (a transaction's
    markers): the consumer's first record is 17. Rewound to 15, the partition answered 17 and
    every record after it STALE, a rewind every retry, for ever."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path, rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(50)]
        log.hold(records)
        assert await admit_all(sink, [records[0], records[20]]) == [Admission.BUFFERED, Admission.STALE]
        log.retain_from(TOPIC, 0, 15)
        del log.records[(TOPIC, 0)][15], log.records[(TOPIC, 0)][16]  # markers: offsets without records
        await sink.check_logs({(TOPIC, 0)})  # the target is gone: the log's start
        assert await admit_all(sink, [records[17]]) == [Admission.STALE]  # 15 holds nothing
        with capture_logs() as logs:
            await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 1), (TOPIC, 0, 15), (TOPIC, 0, 17)]
        (moved,) = [entry for entry in logs if entry["event"].startswith("rewind target holds no record")]
        assert (moved["rewind_target"], moved["first_record"]) == (15, 17)
        assert await admit_all(sink, records[17:]) == [Admission.BUFFERED] * 33
        await sink.flush()
        assert store.total() == 34  # 0, and 17-49

    asyncio.run(scenario())


def test_a_rewind_whose_target_is_still_there_is_asked_again_unchanged(tmp_path):
    async def scenario():
        sink, store, log, _ = make_sink(tmp_path, rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(50)]
        log.hold(records)
        await admit_all(sink, [records[0], records[20]])
        with capture_logs() as logs:
            await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 1), (TOPIC, 0, 1)] and not logs
        assert await admit_all(sink, records[1:]) == [Admission.BUFFERED] * 49
        await sink.flush()
        assert store.total() == 50

    asyncio.run(scenario())


def test_a_gap_the_log_itself_has_is_not_a_skip(tmp_path):
    """Transaction markers and compaction leave offsets without records."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in (0, 1, 2, 5, 6)]
        log.hold(records)
        assert await admit_all(sink, records) == [Admission.BUFFERED] * 5
        await sink.flush()
        assert log.rewinds == [] and store.total() == 5

    asyncio.run(scenario())


def test_records_skipped_past_an_offset_that_holds_none_are_read_again(tmp_path):
    """Offset 10 holds no record (a transaction marker, a compacted offset), and the consumer
    skipped 11-14 after it: the sink asked only whether a record sat at 10, took the jump for
    the log's own gap, and the flush's range covered 11-14 without them (Faust then committed
    past them)."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        records = {i: event_record(i, f"e-{i}") for i in range(20) if i != 10}
        log.hold(list(records.values()))
        await admit_all(sink, [records[i] for i in range(10)])
        assert await admit_all(sink, [records[15]]) == [Admission.STALE]
        assert log.rewinds == [(TOPIC, 0, 11)]
        await admit_all(sink, [records[i] for i in range(11, 20)])
        await sink.flush()
        assert store.total() == 19

    asyncio.run(scenario())


def test_records_skipped_past_an_offset_retention_removed_are_read_again(tmp_path):
    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(20)]
        log.hold(records)
        await admit_all(sink, records[:10])
        log.retain_from(TOPIC, 0, 11)  # 10 is gone; 11-14, which the consumer skips, are not
        assert await admit_all(sink, [records[15]]) == [Admission.STALE]
        assert log.rewinds == [(TOPIC, 0, 11)]
        await admit_all(sink, records[11:])
        await sink.flush()
        assert store.total() == 19

    asyncio.run(scenario())


# --- the intake's synchronous admission agrees with admit ------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(st.integers(0, 24), st.just("flush")), max_size=40))
def test_admit_now_decides_as_admit_does_or_leaves_the_record_to_it(tmp_path, steps):
    """The worker's intake tries ``admit_now`` and awaits ``admit`` only when it says None.
    Any order of offsets (repeats, gaps, going back) and flushes lands the same that way as
    through ``admit`` alone, and a None leaves the sink as it was."""
    records = [event_record(i, f"e-{i}") for i in range(25)]

    async def run(use_now: bool) -> tuple[list, int, list]:
        sink, store, log, _ = make_sink(tmp_path)
        log.hold(records)
        seen: list = []
        for step in steps:
            if step == "flush":
                seen.append(("flush", len(await sink.flush())))
                continue
            record = records[step]
            before = (sink.buffered(), sink.buffered_bytes())
            admission = sink.admit_now(record) if use_now else None
            if admission is None:
                assert (sink.buffered(), sink.buffered_bytes()) == before
                admission = await sink.admit(record)
            seen.append(admission)
            assert sink.buffered() == sum(s.buffered for s in sink.status().values())
        seen.append(("flush", len(await sink.flush())))
        return seen, store.total(), sorted(log.rewinds)

    async def scenario():
        assert await run(use_now=True) == await run(use_now=False)

    asyncio.run(scenario())


def test_admit_now_leaves_unknown_partitions_gaps_and_rewinds_to_admit(tmp_path):
    async def scenario():
        sink, _, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(6)]
        log.hold(records)
        assert sink.admit_now(records[0]) is None  # not recovered yet: that awaits the store
        assert await sink.admit(records[0]) is Admission.BUFFERED
        assert sink.admit_now(records[1]) is Admission.BUFFERED
        assert sink.admit_now(records[1]) is Admission.STALE  # a second delivery
        assert sink.admit_now(records[4]) is None  # a gap: the log is asked, which awaits
        assert sink.buffered() == 2
        await sink.flush()
        assert sink.admit_now(records[0]) is Admission.LANDED

    asyncio.run(scenario())


# --- a failed flush ---------------------------------------------------------------------


class _EventsRefusedOnce(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.refused = False

    def insert_events(self, rows, token):
        if not self.refused:
            self.refused = True
            raise RuntimeError("ClickHouse refused the insert")
        super().insert_events(rows, token)


def test_after_a_failed_flush_nothing_more_lands_and_the_restart_loses_nothing(tmp_path):
    """The failed flush took its records out of the buffers, and its marker landed. Had a
    later flush (the timer's, or the intake's backlog, before the worker stopped) landed the
    partition's next range, the restart would replay only that newest range and skip the
    failed one by offset: 5 of these 10 events were lost that way."""
    store = _EventsRefusedOnce()
    sink, _, log, _ = make_sink(tmp_path, store=store)
    records = [event_record(i, f"e{i}") for i in range(10)]
    log.hold(records)

    async def run() -> list[Admission]:
        await admit_all(sink, records[:5])
        with pytest.raises(RuntimeError, match="ClickHouse refused"):
            await sink.flush()
        await admit_all(sink, records[5:])
        with pytest.raises(FlushRefused) as refused:
            await sink.flush()
        assert isinstance(refused.value.__cause__, RuntimeError)
        # The restart: a sink on the same storage, and Kafka delivers from the last commit (none).
        restarted = UsageSink(sink.engine, sink.send_dead_letters, sink.config, log)
        admitted = await admit_all(restarted, records)
        while await restarted.flush():
            pass
        return admitted

    admitted = asyncio.run(run())
    assert Admission.LANDED not in admitted
    stored = [row[0] for rows in store.events.values() for row in rows]
    assert sorted(stored) == sorted(f"e{i}" for i in range(10))


# --- a consumer that skips records while a range is replayed ------------------------------


class _EventsRefusedWhenAsked(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.refuse = False

    def insert_events(self, rows, token):
        if self.refuse:
            self.refuse = False
            raise RuntimeError("ClickHouse refused the insert")
        super().insert_events(rows, token)


@pytest.mark.parametrize(
    ("delivered", "skipped"),
    [
        pytest.param([5, 6, 8, 9], 7, id="inside-the-range"),
        pytest.param([5, 6, 10, 11], 7, id="from-inside-the-range-past-it"),
        pytest.param([5, 7, 8, 9], 6, id="after-the-first-record"),
    ],
)
def test_a_record_skipped_while_its_range_is_replayed_is_read_again(tmp_path, delivered, skipped):
    """The restart replays the range of the newest marker (5-9), whose events had not landed.
    A consumer that skips a record there (as after a broker restart, see the test above) had
    the range land without it, under the range's own token, and the record answered LANDED
    when it came: lost. Only a first record past the whole range is Kafka resuming past an
    acked range."""
    store = _EventsRefusedWhenAsked()
    sink, _, log, _ = make_sink(tmp_path, store=store)
    records = [event_record(i, f"e{i}", tokens=i + 1) for i in range(12)]
    log.hold(records)

    async def run() -> list[Admission]:
        await admit_all(sink, records[:5])
        await sink.flush()
        await admit_all(sink, records[5:10])
        store.refuse = True
        with pytest.raises(RuntimeError, match="ClickHouse refused"):
            await sink.flush()  # the marker of 5-9 landed, its events did not
        restarted, *_ = make_sink(tmp_path, store=store, log=log)
        admitted = await admit_all(restarted, [records[i] for i in delivered])
        assert Admission.STALE in admitted  # the jump was asked about, and the log rewound
        assert log.rewinds and log.rewinds[-1][2] == skipped
        # Kafka reads again from the rewind.
        admitted += await admit_all(restarted, records[skipped:])
        while await restarted.flush():
            pass
        return admitted

    admitted = asyncio.run(run())
    assert Admission.LANDED not in admitted
    assert sorted(row.event_id for row in store.event_rows()) == sorted(f"e{i}" for i in range(12))
    assert store.total() == sum(range(1, 13))


def test_kafka_resuming_past_a_replayed_range_takes_it_as_landed_without_asking(tmp_path):
    """The range had landed and been acked; only the dedupe keys were missing (a crash before
    step 5). Kafka resumes past it, and nothing is read again."""
    sink, store, log, _ = make_sink(tmp_path)
    records = [event_record(i, f"e{i}", tokens=i + 1) for i in range(12)]
    log.hold(records)

    async def run() -> list[Admission]:
        await admit_all(sink, records[:10])
        await sink.flush()
        restarted, *_ = make_sink(tmp_path, store=store, log=log)
        admitted = await admit_all(restarted, records[10:])
        while await restarted.flush():
            pass
        return admitted

    assert asyncio.run(run()) == [Admission.BUFFERED, Admission.BUFFERED]
    assert log.rewinds == []
    assert store.total() == sum(range(1, 13))


def test_a_first_record_further_past_a_replayed_range_is_asked_about(tmp_path):
    """Kafka resumes right after an acked range; a first record further on means the consumer
    skipped records (10-12 here), which were answered STALE and never counted before."""
    sink, store, log, _ = make_sink(tmp_path)
    records = [event_record(i, f"e{i}", tokens=i + 1) for i in range(16)]
    log.hold(records)

    async def run() -> list[Admission]:
        await admit_all(sink, records[:10])
        await sink.flush()
        restarted, *_ = make_sink(tmp_path, store=store, log=log)
        admitted = await admit_all(restarted, [records[13]])
        assert admitted == [Admission.STALE] and log.rewinds[-1][2] == 0  # the replayed range is read again
        admitted += await admit_all(restarted, records)
        while await restarted.flush():
            pass
        return admitted

    assert Admission.LANDED not in asyncio.run(run())
    assert store.total() == sum(range(1, 17))


def test_offsets_without_records_inside_a_replayed_range_neither_rewind_nor_stall(tmp_path):
    """Transaction markers leave offsets without records (7 and 10 here): asked about, they
    are gaps of the log itself, and the replay keeps its range and token."""
    offsets = [0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12]
    store = _EventsRefusedWhenAsked()
    sink, _, log, _ = make_sink(tmp_path, store=store)
    records = [event_record(o, f"e{o}", tokens=o + 1) for o in offsets]
    log.hold(records)

    async def run() -> list[Admission]:
        await admit_all(sink, [r for r in records if r.offset < 5])
        await sink.flush()
        await admit_all(sink, [r for r in records if 5 <= r.offset <= 9])
        store.refuse = True
        with pytest.raises(RuntimeError, match="ClickHouse refused"):
            await sink.flush()
        restarted, *_ = make_sink(tmp_path, store=store, log=log)
        admitted = await admit_all(restarted, [r for r in records if r.offset >= 5])
        while await restarted.flush():
            pass
        return admitted

    assert asyncio.run(run()) == [Admission.BUFFERED] * 6
    assert log.rewinds == []
    assert store.total() == sum(o + 1 for o in offsets)
    assert any(token.endswith("@1/5-9/events") for token in store.events)


def test_a_replay_whose_first_records_retention_removed_keeps_its_token(tmp_path):
    """5-9 landed, and the worker died before its dedupe write and ack. Retention then removed
    0-7, and Kafka resumes at the log's start, 8. The replay was planned from its first record
    (8-9): another token than the range's, so its rollups landed a second time and its events
    counted as new."""
    sink, store, log, _ = make_sink(tmp_path)
    records = [event_record(i, f"e{i}", tokens=i + 1) for i in range(12)]
    log.hold(records)

    class _Died(Exception):
        pass

    async def first_worker() -> None:
        await admit_all(sink, records[:5])
        await sink.flush()
        await admit_all(sink, records[5:10])
        record_keys = sink.engine.dedupe.record

        def dies(*_args, **_kwargs):
            raise _Died

        sink.engine.dedupe.record = dies
        with pytest.raises(_Died):
            await sink.flush()
        sink.engine.dedupe.record = record_keys

    asyncio.run(first_worker())
    for offset in range(8):
        del log.records[(TOPIC, 0)][offset]
    restarted, *_ = make_sink(tmp_path, store=store, log=log)

    async def run() -> list[Admission]:
        admitted = await admit_all(restarted, records[8:])
        while await restarted.flush():
            pass
        return admitted

    assert Admission.STALE not in asyncio.run(run())
    assert log.rewinds == []
    assert store.total() == sum(range(1, 13))


class _SilentOnce(FakeLog):
    """A broker that does not answer the next probe."""

    silent = False

    async def probe(self, anchors):
        if self.silent:
            self.silent = False
            raise ConnectionError("no answer")
        return await super().probe(anchors)


@pytest.mark.parametrize(
    ("offsets", "start", "landed_first"),
    [
        pytest.param(range(10, 20), 10, 0, id="a-new-partition-whose-log-retention-trimmed"),
        pytest.param([0, 1, 2, 3, 4, *range(7, 20)], 0, 5, id="past-offsets-without-records"),
    ],
)
def test_a_record_whose_gap_the_broker_did_not_answer_about_is_read_again(tmp_path, offsets, start, landed_first):
    """A jump in the offsets is asked about; when the broker did not answer, the record was
    dropped unacked, and the next one asked about the same gap. Told there was no record at its
    start (retention, or transaction markers), it was buffered, and the dropped record, still in
    the log, was covered by the flush's range without ever landing."""

    async def scenario():
        log = _SilentOnce()
        sink, store, _, _ = make_sink(tmp_path, log=log)
        records = [event_record(o, f"e{o}") for o in offsets]
        log.hold(records)
        log.retain_from(TOPIC, 0, start)
        before = [r for r in records if r.offset < landed_first]
        await admit_all(sink, before)
        await sink.flush()
        after = [r for r in records if r.offset >= landed_first]
        log.silent = True
        assert (await admit_all(sink, after))[0] is Admission.STALE
        for _topic, _partition, offset in log.rewinds:  # Kafka reads again from a rewind
            await admit_all(sink, [r for r in records if r.offset >= offset])
        await sink.flush()
        return store, log

    store, log = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sorted(row.event_id for row in store.event_rows()) == sorted(f"e{o}" for o in offsets)
    assert log.rewinds == [(TOPIC, 0, next(o for o in offsets if o >= landed_first))]
