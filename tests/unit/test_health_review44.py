"""/healthz and a log that ends in a transaction marker; Faust's own web pages on the API port.

A producer writing usage in transactions leaves a commit marker after its records: the end of
the log counts the marker's offset, but no record is ever delivered for it. The embedded
broker has no transactions, so the fetch is modelled: aiokafka's own record parsing and
position bookkeeping, fed a fetch of ten records and a commit marker.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from types import SimpleNamespace

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from bastionary.catalog import load_catalog
from bastionary.metering.sink import PartitionStatus
from bastionary.settings import Settings
from bastionary.worker.api.health import fetch_positions, health_report
from bastionary.worker.app import Billing, create_app

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "tests" / "fixtures" / "dunning_catalog.yaml"
TOPIC = "usage.events"
PRODUCER_ID, PRODUCER_EPOCH = 7, 0
COMMIT_MARKER_KEY = struct.pack(">hh", 0, 1)  # control record version 0, type 1: commit
CONTROL_BATCH = 0x20  # record batch attributes, bit 5 (Kafka's DefaultRecordBatch)


def _batch(base_offset: int, keys: list[bytes], control: bool = False) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=1,
        producer_id=PRODUCER_ID,
        producer_epoch=PRODUCER_EPOCH,
        base_sequence=base_offset,
        batch_size=1 << 20,
    )
    for delta, key in enumerate(keys):
        builder.append(delta, timestamp=1_700_000_000_000, key=key, value=b"{}", headers=[])
    data = bytearray(builder.build())
    data[:8] = struct.pack(">q", base_offset)
    if control:
        # The builder writes no control batches; the bit is the only difference (the fetch
        # below does not check CRCs, so the one computed without it does not matter).
        attributes_at = 21  # base offset, length, leader epoch, magic, CRC
        (attributes,) = struct.unpack_from(">h", data, attributes_at)
        struct.pack_into(">h", data, attributes_at, attributes | CONTROL_BATCH)
    return bytes(data)


def faust_consumer_after_fetching(fetch: bytes, high: int) -> tuple[object, list[int]]:
    """A stand-in for Faust's consumer whose aiokafka state has consumed ``fetch`` from 0."""
    tp = TopicPartition(TOPIC, 0)
    subscription = SubscriptionState()
    subscription.assign_from_user({tp})
    assignment = subscription.subscription.assignment
    assignment.state_value(tp).seek(0)
    records = PartitionRecords(tp, MemoryRecords(fetch), None, 0, None, None, False, READ_UNCOMMITTED)
    delivered = [
        record.offset
        for record in FetchResult(tp, assignment=assignment, partition_records=records, backoff=0).getall()
    ]
    client = SimpleNamespace(_subscription=subscription)
    consumer = SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: client), highwater=lambda _tp: high)
    return consumer, delivered


class LandedThrough:
    def __init__(self, done: int, idle: float) -> None:
        self._status = PartitionStatus(
            epoch=1, done_through=done, buffered=0, seconds_idle=idle, seconds_unlanded=0.0, rewinding=False
        )

    def status(self):
        return {(TOPIC, 0): self._status}


def report(consumer, done: int, idle: float = 600.0) -> dict:
    now = time.monotonic()
    return health_report(
        "w1",
        LandedThrough(done, idle),
        now,
        consumer,
        started_at=now - 900,
        stall_after=60,
        broker_silence=10,
        positions=fetch_positions(consumer),
    )


async def test_an_idle_partition_whose_log_ends_in_a_commit_marker_is_healthy():
    fetch = _batch(0, [b"cust-%d" % n for n in range(10)]) + _batch(10, [COMMIT_MARKER_KEY], control=True)
    consumer, delivered = faust_consumer_after_fetching(fetch, high=11)
    assert delivered == list(range(10))  # the marker is no record
    assert fetch_positions(consumer) == {(TOPIC, 0): 11}
    result = report(consumer, done=9)
    assert result["status"] == "ok", result["problems"]
    assert result["partitions"][f"{TOPIC}/0"]["waiting"] == 1  # the lag as Kafka counts it


async def test_records_the_consumer_has_not_reached_are_still_a_stall():
    consumer, delivered = faust_consumer_after_fetching(_batch(0, [b"cust-%d" % n for n in range(10)]), high=15)
    assert delivered == list(range(10)) and fetch_positions(consumer) == {(TOPIC, 0): 10}
    result = report(consumer, done=9)
    assert result["status"] == "unhealthy"
    assert result["problems"] == [f"{TOPIC}/0: 5 records wait in the log and none was read for 600 s"]


async def test_a_consumer_replaying_what_already_landed_counts_only_what_is_past_it():
    # After a restart the consumer may start behind what landed (the sink skips those again).
    consumer, _ = faust_consumer_after_fetching(_batch(0, [b"cust-%d" % n for n in range(3)]), high=12)
    assert fetch_positions(consumer) == {(TOPIC, 0): 3}
    assert "2 records wait in the log" in report(consumer, done=9)["problems"][0]
    assert report(consumer, done=9, idle=5)["status"] == "ok"  # moving: not yet a stall


def test_without_a_position_the_end_of_the_log_decides_as_before():
    # No consumer started, or one that is not Faust's aiokafka consumer: nothing to go by.
    assert fetch_positions(None) == {}
    unstarted = SimpleNamespace(_thread=AIOKafkaConsumerThread.__new__(AIOKafkaConsumerThread))
    unstarted._thread._consumer = None
    assert fetch_positions(unstarted) == {}
    consumer = SimpleNamespace(highwater=lambda _tp: 11)
    assert "1 records wait in the log" in report(consumer, done=9)["problems"][0]


async def test_the_worker_reads_positions_through_the_names_faust_and_aiokafka_have(tmp_path: Path):
    settings = Settings(catalog=CATALOG, data_dir=tmp_path, worker_id="w1", topic_prefix="h44.")
    app = create_app(settings, "localhost:9", lambda *a: None, billing=Billing(load_catalog(CATALOG), lambda: None))
    thread = app.consumer._thread  # type: ignore[attr-defined]
    assert isinstance(thread, AIOKafkaConsumerThread)
    assert callable(thread._ensure_consumer)


async def test_faust_s_table_and_router_pages_are_not_served(tmp_path: Path):
    settings = Settings(catalog=CATALOG, data_dir=tmp_path, worker_id="w1", topic_prefix="h44.")
    app = create_app(settings, "localhost:9", lambda *a: None, billing=Billing(load_catalog(CATALOG), lambda: None))
    app.web.init_server()
    routes = {route.resource.canonical for route in app.web.web_app.router.routes() if route.resource is not None}
    assert not {r for r in routes if r.startswith(("/table", "/router"))}, routes
    assert "/v1/customers/{customer_id}/entitlements" in routes  # our own routing stays
