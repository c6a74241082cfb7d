"""A record's Kafka timestamp, whatever a producer set, as the intake and the log probe read it.

The broker's timestamp is any int64 a producer chose. Faust hands the intake ``ms / 1000.0``;
the log probe reads aiokafka's integer. Both go through ``record_timestamp_ms`` (the probe via
``broker_timestamp_ms``), so an anchor's fingerprint is the one the probe finds, and the
result always fits the 8 bytes a fingerprint packs it in. Checked here: the conversion over
the whole int64 range and beyond; the intake and the probe agreeing on a record's fingerprint;
and a flush whose last record has a timestamp no fingerprint can hold still landing, that
record dead-lettered.
"""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers.aiokafka import Consumer as FaustKafkaConsumer
from faust.types import TP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastionary.ingest.errors import ErrorClass
from bastionary.metering.logs import record_fingerprint
from bastionary.metering.records import InboundRecord, broker_timestamp_ms, record_timestamp_ms
from bastionary.worker.partition_log import KafkaPartitionLog
from bastionary.worker.services.usage_intake import UsageIntake
from tests.unit.test_planning_groups import CATALOG, LIMITS
from tests.unit.test_sink import NOW_MS, TOPIC, event_record, make_sink
from tests.unit.test_usage_intake import _App

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXACT_BELOW = 1000 * 2**43  # |ms| under this survives Faust's float seconds unchanged

int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
edges = st.sampled_from(
    [INT64_MIN, INT64_MIN + 1, -1, 0, 1, NOW_MS, EXACT_BELOW - 1, EXACT_BELOW, 9_000_000_000_000_001]
    + [INT64_MAX - k for k in (0, 1, 511, 512, 513, 1023, 1024)]
)
kafka_timestamps = st.one_of(int64s, edges)
beyond_int64 = st.one_of(st.integers(), st.integers(min_value=2**63, max_value=2**70), st.just(10**400))


def _exact(seconds: float) -> int:
    """The float's exact value in ms, rounded, into the int64 range."""
    return max(INT64_MIN, min(INT64_MAX, round(Fraction(seconds) * 1000)))


# -- the conversion -------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(kafka_timestamps)
@example(INT64_MAX)  # Long.MAX_VALUE: the float round trip made it 2**63
@example(9_000_000_000_000_001)  # the float round trip made it ...002
def test_every_int64_timestamp_converts_exactly_and_fits_a_fingerprint(ms):
    faust_seconds = ms / 1000.0  # faust.transport.drivers.aiokafka.Consumer._to_message
    converted = record_timestamp_ms(faust_seconds)
    assert type(converted) is int and INT64_MIN <= converted <= INT64_MAX
    assert converted == _exact(faust_seconds)
    if abs(ms) < EXACT_BELOW:
        assert converted == ms
    assert broker_timestamp_ms(ms) == converted  # the probe's side of the same record
    record_fingerprint(converted, b"k", b"v")  # never raises


@settings(max_examples=500, deadline=None)
@given(beyond_int64)
def test_an_integer_past_int64_is_clamped_never_raised_on(ms):
    converted = broker_timestamp_ms(ms)
    assert type(converted) is int and INT64_MIN <= converted <= INT64_MAX
    if ms > INT64_MAX:
        assert converted == INT64_MAX
    elif ms < INT64_MIN:
        assert converted == INT64_MIN


@settings(max_examples=1000, deadline=None)
@given(st.floats(), st.floats())
@example(math.nan, 0.0)
@example(math.inf, -math.inf)
@example(2.0**33, math.nextafter(2.0**33, 0))
def test_any_float_gives_an_int64_in_order(a, b):
    converted = [record_timestamp_ms(x) for x in (a, b)]
    for value in converted:
        assert type(value) is int and INT64_MIN <= value <= INT64_MAX
    if not (math.isnan(a) or math.isnan(b)) and a <= b:
        assert converted[0] <= converted[1]


def test_no_timestamp_stays_no_timestamp():
    assert record_timestamp_ms(None) == broker_timestamp_ms(None) == -1
    assert record_timestamp_ms(math.nan) == -1


# -- the intake and the probe -----------------------------------------------------------------


def _broker_record(ms: int, offset: int = 7) -> ConsumerRecord:
    value = event_record(offset, "far-future").value
    return ConsumerRecord(TOPIC, 0, offset, ms, 0, b"cust-1", value, None, 6, len(value or b""), [])


def _intake_record(broker: ConsumerRecord) -> InboundRecord:
    """The record the intake admits for ``broker``, through Faust's own conversion."""
    stub = SimpleNamespace(app=SimpleNamespace(consumer_generation_id=1))
    message = FaustKafkaConsumer._to_message(stub, TP(TOPIC, 0), broker)  # type: ignore[arg-type]
    intake = UsageIntake(_App(), lambda: None, 1, 1, asyncio.Event(), None)  # type: ignore[arg-type]
    record = intake._record(message)
    assert record is not None
    return record


class _ProbeConsumer:
    """The parts of AIOKafkaConsumer the probe uses, holding one partition's records."""

    def __init__(self, records: list[ConsumerRecord]):
        self.records = {r.offset: r for r in records}
        self.position = 0
        self._assigned: set[TopicPartition] = set()

    async def beginning_offsets(self, tps):
        return dict.fromkeys(tps, 0)

    def assignment(self):
        return set(self._assigned)

    def assign(self, tps):
        self._assigned = set(tps)

    def pause(self, *tps):
        pass

    def resume(self, *tps):
        pass

    def seek(self, tp, offset):
        self.position = offset

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        following = sorted(o for o in self.records if o >= self.position)
        return {tp: [self.records[following[0]]] for tp in tps} if following and timeout_ms else {}

    def highwater(self, tp):
        return max(self.records) + 1

    def last_poll_timestamp(self, tp):
        return None


async def _probed_fingerprint(broker: ConsumerRecord) -> int | None:
    log = KafkaPartitionLog("localhost:1", app=None)  # type: ignore[arg-type]
    log._consumer = _ProbeConsumer([broker])  # type: ignore[assignment]
    probe = await log.probe({(TOPIC, 0): broker.offset})
    return probe[(TOPIC, 0)].fingerprint


@settings(max_examples=300, deadline=None)
@given(kafka_timestamps)
@example(9_000_000_000_000_001)
@example(INT64_MAX)
def test_the_probe_finds_the_fingerprint_the_intake_anchored(ms):
    broker = _broker_record(ms)
    record = _intake_record(broker)
    assert asyncio.run(_probed_fingerprint(broker)) == record.fingerprint


def test_a_far_future_anchor_is_not_taken_for_a_replaced_log(tmp_path):
    """Before: every log check (PT2S) rewound the partition and sent its dead letters again."""

    class _KafkaLog:
        def __init__(self, broker: list[ConsumerRecord]):
            self.broker = broker
            self.rewinds: list = []

        async def probe(self, anchors):
            out = {}
            for tp, offset in anchors.items():
                log = KafkaPartitionLog("localhost:1", app=None)  # type: ignore[arg-type]
                log._consumer = _ProbeConsumer(self.broker)  # type: ignore[assignment]
                out.update(await log.probe({tp: offset}))
            return out

        async def rewind(self, topic, partition, offset):
            self.rewinds.append((topic, partition, offset))

    async def scenario():
        broker = [_broker_record(NOW_MS, 0), _broker_record(9_000_000_000_000_001, 1)]
        kafka_log = _KafkaLog(broker)
        sink, _, _, letters = make_sink(tmp_path, log=kafka_log)
        for b in broker:
            await sink.admit(_intake_record(b))
        await sink.flush()
        assert [d.code for d in letters] == [ErrorClass.INVALID_RECORD_TIMESTAMP]
        for _ in range(3):
            await sink.check_logs({(TOPIC, 0)})
        assert kafka_log.rewinds == [] and len(letters) == 1
        assert not sink.status()[(TOPIC, 0)].rewinding

    asyncio.run(scenario())


# -- a flush whose last record no fingerprint can hold ------------------------------------------


def test_a_long_max_value_record_from_faust_has_a_fingerprint():
    record = _intake_record(_broker_record(INT64_MAX))
    assert record.timestamp_ms == INT64_MAX
    record.fingerprint  # noqa: B018  (raised OverflowError: the float round trip made it 2**63)


def _planner(tmp_path):
    from bastionary.dedupe.rocksdb_store import RocksDedupeStore
    from bastionary.metering.planning import FlushPlanner
    from bastionary.metering.readings import MeterIndex

    return FlushPlanner(MeterIndex(CATALOG.meters), RocksDedupeStore(tmp_path / "dedupe", 35 * 86400), LIMITS)


@pytest.mark.parametrize("timestamp_ms", [2**63, 2**64 + 5, -(2**63) - 1])
def test_an_unfingerprintable_last_record_costs_that_record_alone(tmp_path, timestamp_ms):
    good = event_record(0, "e-0")
    hostile = InboundRecord(TOPIC, 0, 1, timestamp_ms, b"cust-1", event_record(1, "e-1").value, [])
    plan = _planner(tmp_path).plan(TOPIC, 0, 1, [good, hostile])
    assert [r.event_id for r in plan.event_rows] == ["e-0"]
    assert [(d.code, dict(d.headers)["source.offset"]) for d in plan.dead_letters] == [
        (ErrorClass.INVALID_RECORD_TIMESTAMP, b"1")
    ]
    assert plan.last_offset == 1 and plan.last_fingerprint == 0  # 0: trusted as the same log


def test_a_last_record_whose_fingerprint_fails_otherwise_is_dead_lettered_once(tmp_path, monkeypatch):
    records = [event_record(0, "e-0"), event_record(1, "e-1")]

    def broken(self):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(InboundRecord, "fingerprint", property(broken))
    plan = _planner(tmp_path).plan(TOPIC, 0, 1, records)
    assert [r.event_id for r in plan.event_rows] == ["e-0"]
    assert [d.code for d in plan.dead_letters] == [ErrorClass.INTERNAL_ERROR]
    assert plan.stats.dead_lettered == 1 and plan.last_fingerprint == 0


def test_the_flush_lands_around_a_record_at_long_max_value(tmp_path):
    """The reviewer's r7: the flush failed, the worker stopped, and a restart failed again."""

    async def scenario():
        sink, store, log, letters = make_sink(tmp_path)
        good = event_record(0, "e-0")
        log.hold([good])
        await sink.admit(good)
        await sink.admit(_intake_record(_broker_record(INT64_MAX, 1)))
        landed = await sink.flush()
        assert [r.offset for r in landed] == [0, 1]
        assert [d.code for d in letters] == [ErrorClass.INVALID_RECORD_TIMESTAMP]
        assert store.total() == 1

    asyncio.run(scenario())
