"""What every worker service shares: the Faust app, the settings, topics, dead letters and
partition ownership."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner

from bastionary.outbound import Source, capped_original, dead_letter_headers
from bastionary.rating.events import latest_event_time
from bastionary.settings import Settings
from bastionary.topics import Topics

_partitioner = DefaultPartitioner()


@dataclass
class WorkerContext:
    app: faust.App
    settings: Settings
    worker_id: str
    topics: Topics = field(init=False)
    _declared: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.topics = Topics(self.settings.topic_prefix)

    def topic(self, name: str) -> Any:
        """A raw-bytes topic, keyed like ``usage.events`` (same partition count)."""
        if name not in self._declared:
            self._declared[name] = self.app.topic(
                name, key_serializer="raw", value_serializer="raw", partitions=self.settings.usage_partitions
            )
        return self._declared[name]

    async def dead_letter(
        self,
        topic: str,
        message: Any,
        code: str,
        text: str,
        value: bytes | None = None,
        exception: str | None = None,
    ) -> None:
        """To ``topic``, with the reason and (for a consumed ``message``) where it came from;
        delivered before this returns."""
        source = Source(message.topic, message.partition, message.offset) if message is not None else None
        headers = dead_letter_headers(code, text, source, exception=exception)
        key = message.key if message is not None else None
        body = value if value is not None else (message.value or b"")
        key, body = capped_original(key, body, headers)  # else the producer may refuse it
        await (await self.topic(topic).send(key=key, value=body, headers=headers))

    def latest_time(self, message: Any) -> datetime | None:
        """The latest event ``time`` a record may carry (``future_time`` beyond it)."""
        return latest_event_time(message.timestamp, self.settings.max_future_skew)

    def assignment_settled(self) -> bool:
        """Whether :meth:`owns` can be trusted now: the worker has joined its group and no
        rebalance or table recovery is under way (until then it owns nothing, or too much)."""
        app = self.app
        return bool(app.consumer.assignment()) and not app.rebalancing and not app.in_recovery

    def owns(self, customer_id: str, topic: str) -> bool:
        """Whether this worker owns ``customer_id``'s partition of ``topic`` (keyed by customer).

        Nothing while a rebalance is under way: from the revocation until the new assignment,
        the consumer still reports the old one, and a rating run started in that gap rated
        partitions being handed over, beside their new owner (one invoice id with two contents,
        a credit note credited twice). The revocation only waits for a run already going."""
        if self.app.rebalancing:
            return False
        consumer = self.app.consumer
        owned = {tp.partition for tp in consumer.assignment() if tp.topic == topic} if consumer is not None else set()
        if not owned:
            return False
        partitions = list(range(self.settings.usage_partitions))
        return _partitioner(customer_id.encode(), partitions, []) in owned
