"""The client's Kafka path (``AsyncClient(bootstrap=...)``), from the forty-sixth session's
review: a record too large retried and failing the whole batch, a broker not up at the first
send failing it without a retry, and aiokafka's own 40 s timeout in place of the client's.
The producer is a stand-in that refuses what aiokafka's own check refuses (a record over its
max request size); tests/integration/test_client_kafka_review46.py does it on a real broker."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from bastionary.client import AsyncClient, DeliveryFailed
from bastionary.client.transport import KafkaSender

PRODUCER_MAX_BYTES = 1_048_576  # aiokafka's default max_request_size


class Producer:
    """Takes what aiokafka's producer takes; ``down_for`` first starts fail to connect."""

    def __init__(self, down_for: int = 0):
        self.down_for = down_for
        self.starts = 0
        self.sends = 0
        self.records: list[tuple[bytes, list[dict[str, Any]]]] = []

    async def start(self) -> None:
        self.starts += 1
        if self.starts <= self.down_for:
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sends += 1
        if len(value) + len(key) + 100 > PRODUCER_MAX_BYTES:
            raise MessageSizeTooLargeError(f"The message is {len(value)} bytes when serialized")
        self.records.append((key, orjson.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def stop(self) -> None:
        return None

    def ids(self) -> list[str]:
        return sorted(event["id"] for _, events in self.records for event in events)


def kafka_client(producer: Producer, **options: Any) -> AsyncClient:
    bc = AsyncClient(bootstrap="kafka:9092", **options)
    assert isinstance(bc._sender, KafkaSender)
    bc._sender._producer = producer  # type: ignore[assignment]
    return bc


async def test_an_event_too_large_fails_alone_at_once_and_the_others_are_published():
    """aiokafka refuses a record over its max request size for good, but it was retried
    (every retry publishing the other customers' records again), then the whole batch, other
    customers' events too, was reported undelivered, and those after it never left."""
    producer = Producer()
    bc = kafka_client(producer, batch_size=10, linger=5, max_retries=3)
    await bc.track_usage("cust-a", "api.request", {"n": 1}, id="small-a")
    await bc.track_usage("cust-big", "api.request", {"blob": "x" * 1_200_000}, id="huge")
    await bc.track_usage("cust-b", "api.request", {"n": 2}, id="small-b")
    with pytest.raises(DeliveryFailed) as failed:
        await bc.flush()
    await bc.close()
    assert [event["id"] for event in failed.value.events] == ["huge"]
    [rejected] = failed.value.cause.rejected  # type: ignore[attr-defined]
    assert (rejected["index"], rejected["id"], rejected["code"]) == (1, "huge", "record_too_large")
    assert producer.ids() == ["small-a", "small-b"]  # each once: nothing retried
    assert producer.sends == 3


async def test_a_customers_batch_larger_than_a_record_is_published_in_parts():
    """Ten events of one customer, 150 kB each: each fits a record, but the customer's batch
    record did not, and all ten failed."""
    producer = Producer()
    bc = kafka_client(producer, batch_size=10, linger=5, max_retries=1)
    tracked = [await bc.track_usage("cust-a", "api.request", {"note": "y" * 150_000}) for _ in range(10)]
    await bc.flush()
    await bc.close()
    assert producer.ids() == sorted(tracked)
    assert len(producer.records) > 1
    assert [event["id"] for _, events in producer.records for event in events] == tracked  # in order
    assert {key for key, _ in producer.records} == {b"cust-a"}


async def test_a_broker_not_up_at_the_first_send_is_retried():
    """The producer's start sat outside the retries: a broker not answering yet failed the
    batch at once, whatever ``max_retries`` said."""
    producer = Producer(down_for=2)
    bc = kafka_client(producer, linger=0, max_retries=3)
    await bc.track_usage("cust-a", "api.request", {"n": 1}, id="e-1")
    await bc.flush()
    await bc.close()
    assert producer.starts == 3
    assert producer.ids() == ["e-1"]


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for connection in held:
            connection.close()


async def test_the_timeout_bounds_each_kafka_request(silent_broker):
    """``timeout`` was not passed to the producer: a broker that did not answer held each
    attempt for aiokafka's own 40 s."""
    sender = KafkaSender(silent_broker, "usage.events", max_retries=0, timeout=0.5)
    started = time.monotonic()
    event = {"id": "e-1", "subject": "cust-a", "type": "api.request", "data": {}}
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(sender.send([event]), 30)
    finally:
        await sender.close()
    assert time.monotonic() - started < 10
