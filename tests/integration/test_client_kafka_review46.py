"""The client's Kafka path on a real broker, from the forty-sixth session's review: an event
too large for a record fails alone, at once, and the rest of its batch is published."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bastionary.client import AsyncClient, DeliveryFailed


async def published_ids(bootstrap: str, topic: str, expected: int) -> list[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    ids: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while len(ids) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                ids += [event["id"] for record in records for event in orjson.loads(record.value or b"[]")]
        await asyncio.sleep(0.5)  # anything published twice would show up meanwhile
        for records in (await consumer.getmany(timeout_ms=300)).values():
            ids += [event["id"] for record in records for event in orjson.loads(record.value or b"[]")]
    finally:
        await consumer.stop()
    return sorted(ids)


def test_an_event_too_large_for_kafka_fails_alone_and_the_batch_goes(kafka_bootstrap):
    topic = f"review46-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[list[str], list[str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 3, 1)])
        finally:
            await admin.close()
        async with AsyncClient(bootstrap=kafka_bootstrap, topic=topic, batch_size=20, linger=5) as bc:
            await bc.track_usage("cust-a", "api.request", {"n": 1}, id="small-a")
            await bc.track_usage("cust-big", "api.request", {"blob": "x" * 1_200_000}, id="huge")
            for n in range(8):  # one customer's 1.2 MB: more than one record takes
                await bc.track_usage("cust-b", "api.request", {"note": "y" * 150_000}, id=f"b-{n}")
            with pytest.raises(DeliveryFailed) as failed:
                await asyncio.wait_for(bc.flush(), 20)
        return [event["id"] for event in failed.value.events], await published_ids(kafka_bootstrap, topic, 9)

    failed, published = asyncio.run(run())
    assert failed == ["huge"]
    assert published == [*(f"b-{n}" for n in range(8)), "small-a"]
