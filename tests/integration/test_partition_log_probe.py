"""The log probe on a real broker: the record at an offset, wherever it sits in a fetched batch.

A flush proves its anchor is still in the log by the record's fingerprint, so the probe must
name exactly the record at the asked offset, never a neighbour fetched with it, and must say
"nothing there" at the log's end.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bastionary.kafka import ensure_topics
from bastionary.metering.logs import record_fingerprint
from bastionary.worker.partition_log import KafkaPartitionLog

pytestmark = pytest.mark.integration

PER_PARTITION = 300


async def _publish(bootstrap: str, topic: str) -> None:
    # A long linger puts each partition's records in a few large batches, as a busy producer does.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=256 * 1024)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, f"value {p}/{i} ".encode() * 8, key=f"k{i}".encode(), partition=p)
            for i in range(PER_PARTITION)
            for p in (0, 1)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _fingerprints(bootstrap: str, topic: str) -> dict[tuple[int, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        found: dict[tuple[int, int], int] = {}
        while len(found) < 2 * PER_PARTITION:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for r in records:
                    found[(tp.partition, r.offset)] = record_fingerprint(r.timestamp, r.key, r.value)
        return found
    finally:
        await consumer.stop()


def test_a_probe_names_the_record_at_each_offset_and_nothing_past_the_end(kafka_bootstrap):
    topic = f"probe-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        await _publish(kafka_bootstrap, topic)
        expected = await _fingerprints(kafka_bootstrap, topic)
        log = KafkaPartitionLog(kafka_bootstrap, app=None)  # type: ignore[arg-type]  # rewind is not used
        try:
            for offsets in ((0, 0), (150, 7), (PER_PARTITION - 1, 151), (42, 42)):
                anchors = {(topic, 0): offsets[0], (topic, 1): offsets[1]}
                probes = await log.probe(anchors)
                for partition, offset in enumerate(offsets):
                    probe = probes[(topic, partition)]
                    assert probe.offset == offset
                    assert probe.fingerprint == expected[(partition, offset)], (partition, offset)
                    assert probe.next_record == offset  # the record is there: it is the next one
            at_end = await log.probe({(topic, 0): PER_PARTITION, (topic, 1): 5})
            assert at_end[(topic, 0)].fingerprint is None
            assert at_end[(topic, 0)].high_water == PER_PARTITION
            assert at_end[(topic, 0)].next_record is None
            assert at_end[(topic, 1)].fingerprint == expected[(1, 5)]
        finally:
            await log.close()

    asyncio.run(scenario())


def test_a_probe_keeps_little_of_what_its_fetches_brought(kafka_bootstrap):
    # A probe reads one record; the rest of what its fetch brought stays in the consumer until
    # the next probe. A worker ingesting a backlog probes at every flush, and a broker that
    # exceeds the per-partition cap (Tansu sent 5.5 MB for one partition asked for 64 KiB)
    # made that about 100 MB of the worker's heap. The probe drops it before it returns.
    topic = f"probe-big-{uuid.uuid4().hex[:8]}"
    records_per_partition, value = 400, b"v" * 13_000  # 5.2 MB a partition: batch records' size

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50, max_batch_size=256 * 1024)
        await producer.start()
        try:
            sent = [
                await producer.send(topic, value, partition=p) for _ in range(records_per_partition) for p in (0, 1)
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        log = KafkaPartitionLog(kafka_bootstrap, app=None)  # type: ignore[arg-type]  # rewind is not used
        try:
            await log.probe({(topic, 0): 0, (topic, 1): 0})  # the client started, its buffers made
            gc.collect()
            tracemalloc.start()
            try:
                for offset in (1, 100, 200):
                    probes = await log.probe({(topic, 0): offset, (topic, 1): offset})
                    assert all(probe.fingerprint is not None for probe in probes.values())
                gc.collect()
                held, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert held < 1024 * 1024, f"{held / 1e6:.1f} MB held after a probe"
        finally:
            await log.close()

    asyncio.run(scenario())
