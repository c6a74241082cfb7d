"""The rater's look at how far usage has landed (worker/usage_landed.py), against the real
broker: the end of a partition's last record batch, a broker that stops answering halfway
through a look, and one that is not there."""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings

import pytest
from aiokafka import AIOKafkaConsumer

from bastionary.devstack.broker import free_port
from bastionary.kafka import UsageProducer, ensure_topics
from bastionary.worker import usage_landed
from bastionary.worker.usage_landed import UsageLanded, usage_positions

from .test_usage_landed import _commit

pytestmark = pytest.mark.integration


async def _one_batch(bootstrap: str, topic: str, records: int) -> None:
    async with UsageProducer(bootstrap, linger_ms=50) as producer:
        await asyncio.gather(*[await producer.send(topic, b"usage %d" % k, key=b"cust") for k in range(records)])


def test_the_records_of_a_last_batch_not_all_landed_are_waited_for(kafka_bootstrap):
    """The embedded broker answered a partition's end as its last batch's first offset plus
    one: 50 records in one batch read as landed once the first of them had."""
    topic, group = f"batch-{uuid.uuid4().hex[:8]}.usage.events", f"batch-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [topic], partitions=1)
        await _one_batch(kafka_bootstrap, topic, 50)
        assert dict((await usage_positions(kafka_bootstrap, group, topic)).ends) == {0: 50}
        landed = UsageLanded(kafka_bootstrap, group, topic)
        await _commit(kafka_bootstrap, group, topic, {0: 1})
        assert await landed.through() is None  # 49 of the batch still to land
        await _commit(kafka_bootstrap, group, topic, {0: 50})
        assert await landed.through() is not None

    asyncio.run(scenario())


def test_a_broker_that_stops_answering_halfway_does_not_hold_the_rating_run(kafka_bootstrap, monkeypatch):
    """aiokafka looks for the group's coordinator until one answers: a broker that died after
    the end offsets were read held the rating run (and the rebalances and credit-limit checks
    waiting for it) for good, instead of rating as of the last moment known landed."""
    topic, group = f"hang-{uuid.uuid4().hex[:8]}.usage.events", f"hang-{uuid.uuid4().hex[:8]}"

    async def never_answers(self: AIOKafkaConsumer, partition: object) -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [topic], partitions=1)
        landed = UsageLanded(kafka_bootstrap, group, topic)
        known = await landed.through()  # an empty topic: landed through the look
        assert known is not None
        monkeypatch.setattr(AIOKafkaConsumer, "committed", never_answers)
        monkeypatch.setattr(usage_landed, "LOOK_TIMEOUT_SECONDS", 1.0, raising=False)
        assert await asyncio.wait_for(landed.through(), 20) == known
        await asyncio.sleep(1)  # the look given up on closes its client on its own

    asyncio.run(scenario())


def test_a_broker_that_is_not_there_leaves_no_client_open():
    """A start that failed left its client unclosed: an ERROR from asyncio (`Unclosed
    AIOKafkaConsumer`) every rating run, every 10 s, while the broker was away."""

    async def scenario() -> None:
        landed = UsageLanded(f"127.0.0.1:{free_port()}", "no-group", "usage.events")
        assert await landed.through() is None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
