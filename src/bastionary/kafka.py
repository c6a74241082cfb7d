"""Plain aiokafka helpers for the command line (producing, creating topics); workers use Faust."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

Headers = Sequence[tuple[str, bytes]]


class ProducedRecord(Protocol):
    """A prepared record (such as a workload's): its key, value and headers as they go on the wire."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes: ...

    @property
    def headers(self) -> Headers: ...


@dataclass(frozen=True)
class KafkaTarget:
    bootstrap: str
    log_epoch: int  # the lowest epoch a partition may have; an embedded broker starts empty, so each start raises it


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, replication: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                answer = await admin.create_topics(missing)
                _raise_refusals(answer, replication)
    finally:
        await admin.close()


class TopicsRefused(RuntimeError):
    """The broker refused to create topics (a replication factor above its brokers, say)."""


def _raise_refusals(answer: Any, replication: int) -> None:
    """aiokafka returns each topic's error code and does not raise: unread, a worker started as
    if its topics existed, and failed later, far from the cause."""
    refused = []
    for error in getattr(answer, "topic_errors", ()):
        name, code = error[0], error[1]
        message = error[2] if len(error) > 2 else None  # CreateTopics v1 and later
        if code not in (0, TopicAlreadyExistsError.errno):
            refused.append(f"{name}: error {code}{f' ({message})' if message else ''}")
    if refused:
        raise TopicsRefused(
            f"the broker refused to create {', '.join(refused)}; check BASTIONARY_TOPIC_REPLICATION"
            f" ({replication}) and BASTIONARY_USAGE_PARTITIONS against the cluster"
        )


async def list_topics(bootstrap: str) -> list[str]:
    """The broker's topics: a round trip that proves it answers."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def subject_key(payload: object) -> bytes | None:
    """The record key is the customer: the CloudEvents subject, or ``data.customer_id`` for
    billing events, so all of a customer's records share one partition."""
    first = payload[0] if isinstance(payload, list) and payload else payload
    if not isinstance(first, dict):
        return None
    subject = first.get("subject")
    if not isinstance(subject, str) and isinstance(first.get("data"), dict):
        subject = first["data"].get("customer_id")
    return subject.encode() if isinstance(subject, str) else None


class UsageProducer:
    """Publishes usage records: one event, or a list of events as one batch record."""

    def __init__(self, bootstrap: str, linger_ms: int = 10) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms, max_batch_size=256 * 1024
        )

    async def __aenter__(self) -> UsageProducer:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # a failed start leaves its connections open otherwise
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self, topic: str, payload: object, key: bytes | None = None, headers: Headers | None = None
    ) -> asyncio.Future[Any]:
        """Queue ``payload`` (bytes as they are, anything else as JSON); the future resolves to
        aiokafka's record metadata once the broker has it."""
        value = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        delivery: asyncio.Future[Any] = await self._producer.send(
            topic, value, key=key if key is not None else subject_key(payload), headers=headers
        )
        return delivery

    async def flush(self) -> None:
        await self._producer.flush()


async def publish_records(
    bootstrap: str,
    topic: str,
    records: Iterable[ProducedRecord],
    progress: Callable[[int], object] | None = None,
) -> dict[int, int]:
    """Send workload records (key, value, headers) in order; returns the next offset per partition."""
    ends: dict[int, int] = {}
    async with UsageProducer(bootstrap) as producer:
        pending: list[asyncio.Future[Any]] = []
        for record in records:
            pending.append(await producer.send(topic, record.value, key=record.key, headers=record.headers or None))
            if len(pending) >= 5000:
                for meta in await asyncio.gather(*pending):
                    ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
                if progress:
                    progress(len(pending))
                pending = []
        for meta in await asyncio.gather(*pending):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        if progress and pending:
            progress(len(pending))
    return ends


async def read_topic(
    bootstrap: str, topic: str, idle_seconds: float = 2.0, expect: int | None = None
) -> list[Any]:  # aiokafka's ConsumerRecords
    """Every record of ``topic`` from the beginning (stops once idle, or at ``expect`` records)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        idle_since = asyncio.get_running_loop().time()
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                out.extend(messages)
            now = asyncio.get_running_loop().time()
            if batch:
                idle_since = now
            if (expect is not None and len(out) >= expect) or now - idle_since > idle_seconds:
                return out
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic``: records below them have fully landed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        out: dict[int, int] = {}
        for partition in partitions:
            offset = await consumer.committed(TopicPartition(topic, partition))
            if offset is not None and offset >= 0:
                out[partition] = offset
        return out
    finally:
        await consumer.stop()
