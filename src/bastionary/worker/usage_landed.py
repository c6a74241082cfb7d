"""The rater's look at how far the usage workers have landed (see
:mod:`bastionary.metering.landed_clock`): the usage topic's offsets and the usage consumer
group's committed offsets, read with a plain aiokafka consumer that joins no group."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bastionary.metering.landed_clock import LandedClock, Positions

log = structlog.get_logger(__name__)

# Rating this far behind the clock for want of landed usage is worth an operator's look.
BEHIND_WARNING = timedelta(minutes=1)
WARN_EVERY_SECONDS = 300.0


async def usage_positions(bootstrap: str, group: str, topic: str, timeout_ms: int = 10_000) -> Positions:
    """``topic``'s first and end offsets, then ``group``'s committed offsets on it, in that
    order. A topic the broker does not know yet has no partitions."""
    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, request_timeout_ms=timeout_ms
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return Positions({}, {}, {})
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        committed: dict[int, int] = {}
        for tp in tps:
            offset = await consumer.committed(tp)
            if offset is not None and offset >= 0:
                committed[tp.partition] = offset
        return Positions(
            {tp.partition: o for tp, o in begins.items()}, {tp.partition: o for tp, o in ends.items()}, committed
        )
    finally:
        await consumer.stop()


class UsageLanded:
    """``through()``: the moment before which every usage record the broker took has landed,
    None until that is known. The rater rates as of it."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._bootstrap, self._group, self._topic = bootstrap, group, topic
        self._clock = LandedClock()
        self._warned_at = float("-inf")

    async def through(self) -> datetime | None:
        taken_before = datetime.now(UTC)
        try:
            positions = await usage_positions(self._bootstrap, self._group, self._topic)
        except Exception as exc:  # the broker away: what had landed has still landed
            log.warning("usage offsets not read; rating as of the last moment known landed", error=repr(exc))
            return self._clock.through
        through = self._clock.observe(taken_before, positions)
        if (through is None or taken_before - through > BEHIND_WARNING) and self._warn_now():
            log.warning(
                "rating waits for usage to land",
                landed_through=through.isoformat() if through is not None else None,
                group=self._group,
                committed=dict(positions.committed),
                ends=dict(positions.ends),
            )
        return through

    def _warn_now(self) -> bool:
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_SECONDS:
            return False
        self._warned_at = now
        return True
