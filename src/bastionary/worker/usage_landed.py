"""The rater's look at how far the usage workers have landed (see
:mod:`bastionary.metering.landed_clock`): the usage topic's offsets and the usage consumer
group's committed offsets, read with a plain aiokafka consumer that joins no group."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bastionary.metering.landed_clock import LandedClock, Positions
from bastionary.worker.deadline import within

log = structlog.get_logger(__name__)

# Rating this far behind the clock for want of landed usage is worth an operator's look.
BEHIND_WARNING = timedelta(minutes=1)
WARN_EVERY_SECONDS = 300.0
# A look is a few round trips; a broker that dies halfway would hold the rating run for good
# (aiokafka looks for the group's coordinator until it answers), so it is given up on.
LOOK_TIMEOUT_SECONDS = 15.0
LAST_BATCH_FETCH_BYTES = 64 * 1024


async def usage_positions(bootstrap: str, group: str, topic: str, timeout_ms: int = 10_000) -> Positions:
    """``topic``'s first and end offsets, then ``group``'s committed offsets on it, in that
    order. A topic the broker does not know yet has no partitions."""
    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=timeout_ms,
        # Reads a partition's last record batch: one batch a response (Tansu, too, keeps to it).
        max_partition_fetch_bytes=LAST_BATCH_FETCH_BYTES,
        fetch_max_bytes=LAST_BATCH_FETCH_BYTES,
    )
    try:
        await consumer.start()  # inside: a failed start leaves its connections open otherwise
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return Positions({}, {}, {})
        begins = await consumer.beginning_offsets(tps)
        ends = await _past_last_batches(consumer, begins, await consumer.end_offsets(tps))
        committed: dict[int, int] = {}
        for tp in tps:
            offset = await consumer.committed(tp)
            if offset is not None and offset >= 0:
                committed[tp.partition] = offset
        return Positions(
            {tp.partition: o for tp, o in begins.items()}, {tp.partition: o for tp, o in ends.items()}, committed
        )
    finally:
        with contextlib.suppress(Exception):  # a broker that is gone cannot be said goodbye to
            await within(consumer.stop(), 2.0, "stopping the usage offsets client")


async def _past_last_batches(
    consumer: AIOKafkaConsumer, begins: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Each partition's end offset past its last record. The embedded broker (Tansu) answers
    the base offset of the last record batch plus one, not past the batch's last record: a
    partition whose last batch held 50 records read as landed once its first had. So the
    batch at ``end - 1`` is read, and the end is past its last record (on Kafka, that is the
    end it answered; a transaction marker there brings no record, and the position passes it)."""
    past = dict(ends)
    unread = {tp: end for tp, end in ends.items() if end > begins.get(tp, 0)}
    if not unread:
        return past
    consumer.assign(list(unread))
    for tp, end in unread.items():
        consumer.seek(tp, end - 1)
    while unread:
        fetched = await consumer.getmany(*unread, timeout_ms=100)
        for tp, records in fetched.items():
            past[tp] = max(past[tp], records[-1].offset + 1)
            unread.pop(tp, None)
        for tp, end in list(unread.items()):
            if await consumer.position(tp) >= end:
                unread.pop(tp)
    return past


class UsageLanded:
    """``through()``: the moment before which every usage record the broker took has landed,
    None until that is known. The rater rates as of it."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._bootstrap, self._group, self._topic = bootstrap, group, topic
        self._clock = LandedClock()
        self._warned_at = float("-inf")
        # When looks began to fail, while they fail: a broker down is told once, not at every
        # rating run (every 10 s by default), and again once its offsets are read.
        self._unread_since: datetime | None = None

    async def through(self) -> datetime | None:
        taken_before = datetime.now(UTC)
        try:
            positions = await within(
                usage_positions(self._bootstrap, self._group, self._topic),
                LOOK_TIMEOUT_SECONDS,
                "reading the usage offsets",
            )
        except Exception as exc:  # the broker away: what had landed has still landed
            if self._unread_since is None:
                self._unread_since = taken_before
                log.warning("usage offsets not read; rating as of the last moment known landed", error=repr(exc))
            return self._clock.through
        if self._unread_since is not None:
            log.info("usage offsets read again", unread_since=self._unread_since.isoformat())
            self._unread_since = None
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
