"""Plain aiokafka helpers for the command line (producing, creating topics); workers use Faust."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, replication: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def subject_key(payload) -> bytes | None:
    """The record key is the CloudEvents subject (the customer), so a customer keeps one partition."""
    first = payload[0] if isinstance(payload, list) and payload else payload
    subject = first.get("subject") if isinstance(first, dict) else None
    return subject.encode() if isinstance(subject, str) else None


class UsageProducer:
    """Publishes usage records: one event, or a list of events as one batch record."""

    def __init__(self, bootstrap: str, linger_ms: int = 10):
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms, max_batch_size=256 * 1024
        )

    async def __aenter__(self) -> "UsageProducer":
        await self._producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._producer.stop()

    async def send(self, topic: str, payload, key: bytes | None = None, headers=None) -> asyncio.Future:
        value = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return await self._producer.send(topic, value, key=key or subject_key(payload), headers=headers)

    async def flush(self) -> None:
        await self._producer.flush()
