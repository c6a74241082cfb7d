"""Every dead letter fits the worker's own producer, whatever the record held.

The DLQ producer refuses, client-side, a record over its max request size (Faust's
``producer_max_request_size``, 1,000,000 by default), counting key, value and headers; a
refused dead letter fails its flush and every replay of it. So the planner caps each part: the
value (64 KiB), the key, and the original headers it copies (a binary-mode event's ``ce_*``
attributes kept first; a header says how many bytes were left out). A batch copies the
headers onto each rejected member, so the cap also bounds what one record can make the flush send.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.ingest.errors import ErrorClass
from bastionary.metering import planning
from bastionary.metering.planning import FlushPlanner
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import DeadLetter, InboundRecord
from bastionary.outbound import DEAD_LETTER_KEY_LIMIT
from tests.unit.test_sink import CATALOG, NOW_MS, TOPIC, event_record, make_sink

PRODUCER_LIMIT = 1_000_000  # Faust's producer_max_request_size default, which the worker keeps
LIMITS = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))


def wire_size(letter: DeadLetter) -> int:
    """What aiokafka's producer compares with its max request size (AIOKafkaProducer._serialize)."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, letter.value, letter.headers)


def _planner(tmp_path) -> FlushPlanner:
    store = RocksDedupeStore(tmp_path / f"dedupe-{len(list(tmp_path.iterdir()))}", 35 * 86400)
    return FlushPlanner(MeterIndex(CATALOG.meters), store, LIMITS)


def _record(offset: int, value: bytes | None, headers, key: bytes | None = b"cust-1") -> InboundRecord:
    return InboundRecord(TOPIC, 0, offset, NOW_MS, key, value, headers)


def test_a_dead_letter_of_a_record_with_a_megabyte_of_headers_fits_the_producer(tmp_path):
    """The reviewer's r6: the broker took the record, the worker's producer refused its dead letter."""
    junk = [(f"x-trace-{i}", b"t" * 9_990) for i in range(100)]
    (letter,) = _planner(tmp_path).plan(TOPIC, 0, 1, [_record(0, b"not json", junk)]).dead_letters
    assert letter.code is ErrorClass.INVALID_JSON
    assert wire_size(letter) <= planning.DEAD_LETTER_MAX_BYTES < PRODUCER_LIMIT
    headers = dict(letter.headers)
    kept = [name for name, _ in letter.headers if name.startswith("x-trace-")]
    assert kept == [f"x-trace-{i}" for i in range(len(kept))] and 0 < len(kept) < 100
    dropped = [(name, value) for name, value in junk if name not in kept]
    assert int(headers["source.headers_dropped_bytes"]) == sum(len(n) + len(v) for n, v in dropped)


def test_a_binary_mode_events_attributes_are_kept_before_other_headers(tmp_path):
    attributes = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-1"),
        ("ce_source", b"s" * 4000),
        ("ce_type", b"llm"),
        ("ce_subject", b"c" * 2000),
        ("ce_time", b"2026-02-28T23:59:00Z"),
        ("content-type", b"application/json"),
    ]
    junk = [(f"x-{i}", b"j" * 5_000) for i in range(10)]
    headers = junk[:5] + attributes + junk[5:]
    (letter,) = _planner(tmp_path).plan(TOPIC, 0, 1, [_record(0, b'{"tokens": -1', headers)]).dead_letters
    copied = [(n, v) for n, v in letter.headers if not n.startswith(("error.", "source."))]
    assert [h for h in copied if h in attributes] == attributes  # all of them, in their order
    assert [n for n, _ in copied] == [n for n, _ in headers if (n, _) in copied]  # the record's order
    assert "source.headers_dropped_bytes" in dict(letter.headers)


def test_a_record_within_the_header_budget_keeps_every_header(tmp_path):
    headers = [("ce_specversion", b"1.0"), ("x-a", None), ("error.class", b"spoofed"), ("b\udcff", b"v")]
    (letter,) = _planner(tmp_path).plan(TOPIC, 0, 1, [_record(0, b"nope", headers)]).dead_letters
    names = [n for n, _ in letter.headers]
    assert names[-3:] == ["ce_specversion", "x-a", "b\\udcff"]  # an escaped name, as before
    assert "source.headers_dropped_bytes" not in names and names.count("error.class") == 1


def test_a_long_key_is_cut_and_its_size_said(tmp_path):
    key = b"k" * 900_000
    (letter,) = _planner(tmp_path).plan(TOPIC, 0, 1, [_record(0, b"x" * 90_000, [], key=key)]).dead_letters
    assert letter.key == key[:DEAD_LETTER_KEY_LIMIT]
    assert dict(letter.headers)["source.key_bytes"] == b"900000"
    assert dict(letter.headers)["source.value_bytes"] == b"90000"
    assert wire_size(letter) <= planning.DEAD_LETTER_MAX_BYTES


sizes = st.integers(min_value=0, max_value=1_100_000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key_bytes=st.one_of(st.none(), sizes),
    value_bytes=st.one_of(st.none(), sizes),
    header_count=st.integers(min_value=0, max_value=20_000),
    header_bytes=sizes,
    name_bytes=st.integers(min_value=0, max_value=40_000),
    batch=st.booleans(),
)
def test_whatever_its_sizes_every_dead_letter_fits_the_producer(
    tmp_path, key_bytes, value_bytes, header_count, header_bytes, name_bytes, batch
):
    per_value = header_bytes // max(header_count, 1)
    headers = [(f"{i:05d}" + "n" * name_bytes, b"h" * per_value) for i in range(min(header_count, 50))]
    headers += [("", None)] * max(0, header_count - 50)  # many empty headers: each costs framing
    if batch:
        member = json.loads(event_record(0, "e-0", tokens=-1).value)
        member["note"] = "x" * min(value_bytes or 0, 300_000)
        value: bytes | None = json.dumps([member, member, 1]).encode()
    else:
        value = None if value_bytes is None else b"{" * value_bytes
    key = None if key_bytes is None else b"k" * key_bytes
    plan = _planner(tmp_path).plan(TOPIC, 0, 1, [_record(0, value, headers, key=key)])
    assert plan.dead_letters
    for letter in plan.dead_letters:
        assert wire_size(letter) <= planning.DEAD_LETTER_MAX_BYTES < PRODUCER_LIMIT


def test_a_batch_of_rejected_members_sends_a_bounded_amount(tmp_path):
    """The reviewer's r5: 10,000 members x 400 KB of copied headers, 4 GB from one record."""
    headers = [(f"h{i}", b"x" * 4000) for i in range(100)]
    plan = _planner(tmp_path).plan(TOPIC, 0, 1, [_record(0, json.dumps([1] * 10_000).encode(), headers)])
    assert len(plan.dead_letters) == 10_000
    total = sum(wire_size(letter) for letter in plan.dead_letters)
    assert total <= 10_000 * (planning.DEAD_LETTER_HEADERS_LIMIT + 5_000)  # under 0.22 GB, was 4.0


def test_the_flush_lands_when_the_dlq_producer_checks_sizes(tmp_path):
    """The reviewer's r6 through the sink: before, every worker life failed the same flush."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path)
        sent: list[DeadLetter] = []

        async def send(letters):
            for letter in letters:  # the check AIOKafkaProducer._serialize makes
                assert wire_size(letter) <= PRODUCER_LIMIT, "MessageSizeTooLargeError"
                sent.append(letter)

        sink.send_dead_letters = send  # type: ignore[method-assign]
        good = event_record(0, "e-0")
        hostile = _record(1, b"not json", [(f"x-trace-{i}", b"t" * 9_990) for i in range(100)])
        log.hold([good, hostile])
        await sink.admit(good)
        await sink.admit(hostile)
        assert [r.offset for r in await sink.flush()] == [0, 1]
        assert [d.code for d in sent] == [ErrorClass.INVALID_JSON] and store.total() == 1

    asyncio.run(scenario())


class _SentTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, list]] = []

    async def send(self, key, value, headers):
        self.sent.append((key, value, headers))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _App:
    def __init__(self) -> None:
        self.topics: dict[str, _SentTopic] = {}

    def topic(self, name, **_options):
        return self.topics.setdefault(name, _SentTopic())


class _Message:
    topic, partition, offset = "billing.subscriptions", 0, 7

    def __init__(self, key: bytes, value: bytes) -> None:
        self.key, self.value = key, value


def test_billing_and_dunning_dead_letters_are_cut_as_usage_ones_are():
    """A billing record of about 1 MB (the broker takes it, the worker's producer refuses more
    than 1,000,000 bytes) was dead-lettered whole: the send failed, the intake stopped the
    worker before the ack, and every restart met the same record."""
    from bastionary.outbound import DEAD_LETTER_VALUE_LIMIT
    from bastionary.settings import Settings
    from bastionary.worker.context import WorkerContext

    app = _App()
    context = WorkerContext(app, Settings(), "w1")  # type: ignore[arg-type]
    key, value = b"k" * 5_000, b"v" * 1_000_100
    asyncio.run(context.dead_letter("billing.dlq", _Message(key, value), "invalid_json", "not JSON"))
    ((sent_key, sent_value, headers),) = app.topics["billing.dlq"].sent
    assert (sent_key, sent_value) == (key[:DEAD_LETTER_KEY_LIMIT], value[:DEAD_LETTER_VALUE_LIMIT])
    assert dict(headers)["source.value_bytes"] == b"1000100"
    assert dict(headers)["source.key_bytes"] == b"5000"
    small = _Message(b"cust-1", b"{}")
    asyncio.run(context.dead_letter("billing.dlq", small, "invalid_json", "not JSON"))
    assert app.topics["billing.dlq"].sent[-1][:2] == (b"cust-1", b"{}")
    assert "source.value_bytes" not in dict(app.topics["billing.dlq"].sent[-1][2])
