"""The rater's look at how far usage has landed, against the real broker: the usage topic's
end offsets and the usage consumer group's committed offsets (worker/usage_landed.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from bastionary.kafka import ensure_topics
from bastionary.worker.usage_landed import UsageLanded, usage_positions

pytestmark = pytest.mark.integration


async def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in offsets])
        await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()})
    finally:
        await consumer.stop()


def test_the_moment_landed_follows_the_usage_groups_commits(kafka_bootstrap):
    topic, group = f"landed-{uuid.uuid4().hex[:8]}.usage.events", f"landed-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [topic], partitions=2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for k in range(5):
                await producer.send_and_wait(topic, b"usage %d" % k, partition=0)
            await producer.send_and_wait(topic, b"usage", partition=1)
        finally:
            await producer.stop()

        positions = await usage_positions(kafka_bootstrap, group, topic)
        assert (dict(positions.ends), dict(positions.committed)) == ({0: 5, 1: 1}, {})

        landed = UsageLanded(kafka_bootstrap, group, topic)
        before_first_look = datetime.now(UTC)
        assert await landed.through() is None  # nothing committed: nothing known to have landed
        await _commit(kafka_bootstrap, group, topic, {0: 3, 1: 1})
        assert await landed.through() is None  # records 3 and 4 of partition 0 still to land
        await _commit(kafka_bootstrap, group, topic, {0: 5})
        moment = await landed.through()
        assert moment is not None and moment >= before_first_look
        assert moment <= datetime.now(UTC)

    asyncio.run(scenario())


def test_a_topic_the_broker_does_not_know_has_no_partitions_and_nothing_landed(kafka_bootstrap):
    async def scenario() -> None:
        landed = UsageLanded(kafka_bootstrap, "no-group", f"missing-{uuid.uuid4().hex[:8]}")
        assert await landed.through() is None

    asyncio.run(scenario())
