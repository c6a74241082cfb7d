"""The sink's view of the broker (``metering.logs.PartitionLog``) on Kafka.

Probes read single records with a consumer of their own that joins no group, so they
never disturb the worker's assignment or offsets. Rewinds move the Faust consumer. Every call
on the probe client is bounded by :func:`bastionary.worker.deadline.within`: one that hangs is
given up on and the client replaced, so the lock here is never held past a timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from faust.types import TP

from bastionary.metering.logs import LogProbe, record_fingerprint
from bastionary.metering.records import broker_timestamp_ms
from bastionary.worker.deadline import within

log = structlog.get_logger(__name__)


class KafkaPartitionLog:
    def __init__(self, bootstrap: str, app: faust.App, timeout: float = 5.0):
        self._bootstrap = bootstrap
        self._app = app
        self.timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self.last_answer: float | None = None  # monotonic time the broker last answered a probe

    async def _client(self) -> AIOKafkaConsumer:
        """The probe consumer, started on first use (within the caller's timeout)."""
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="none",  # an offset outside the log is an answer, not a reset
                fetch_max_wait_ms=20,
                # Caps on what one fetch brings, of which a probe reads one record. Tansu
                # exceeds the per-partition cap (it sent 5.5 MB for one partition asked for
                # 64 KiB) but keeps to the whole response's, down to one record batch; Kafka
                # keeps to both. Without the response's cap the probe's fetches held about
                # 100 MB of the worker's heap in a 1M-event ingest (tracemalloc, bench rss-http).
                max_partition_fetch_bytes=64 * 1024,
                fetch_max_bytes=64 * 1024,
                request_timeout_ms=int(self.timeout * 1000),
            )
            try:
                await consumer.start()
            except BaseException:
                await _stop(consumer)
                raise
            self._consumer = consumer
        return self._consumer

    async def probe(self, anchors: dict[tuple[str, int], int]) -> dict[tuple[str, int], LogProbe]:
        if not anchors:
            return {}
        async with self._lock:
            try:
                result = await within(self._probe(anchors), self.timeout, "a log probe")
            except BaseException:
                await self._drop_client()
                raise
        self.last_answer = time.monotonic()
        return result

    async def _probe(self, anchors: dict[tuple[str, int], int]) -> dict[tuple[str, int], LogProbe]:
        consumer = await self._client()
        wanted = {TopicPartition(t, p): offset for (t, p), offset in anchors.items()}
        starts = await consumer.beginning_offsets(list(wanted))
        if not set(wanted) <= consumer.assignment():
            consumer.assign(list(set(wanted) | consumer.assignment()))
            consumer.pause(*consumer.assignment())
        found: dict[TopicPartition, int | None] = {}
        next_records: dict[TopicPartition, int] = {}
        asked_ms = int(time.time() * 1000)  # aiokafka stamps fetch answers with the wall clock
        for tp, offset in wanted.items():
            if offset < starts.get(tp, 0):
                found[tp] = None  # deleted, or the log now starts later
            else:
                consumer.seek(tp, offset)
                consumer.resume(tp)
        try:
            while len(found) < len(wanted):
                pending = [tp for tp in wanted if tp not in found]
                try:
                    # One record per call: only the first record at or past the offset
                    # answers. A fetch brings 64 KiB or more per partition; unpacking all of it
                    # ran on the event loop at every flush (6% of the main thread's busy time
                    # with single-event records; 8.4-8.8 ms of CPU per probe of 4 partitions
                    # of 300-byte records, 1.9-2.3 ms like this).
                    batch = await consumer.getmany(*pending, timeout_ms=50, max_records=1)
                except OffsetOutOfRangeError as exc:
                    for tp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else pending:
                        found[tp] = None
                    continue
                for tp, records in batch.items():
                    record = next((r for r in records if r.offset == wanted[tp]), None)
                    if record is not None:
                        # The intake only sees Faust's float seconds: fingerprinting the raw
                        # integer would differ from the anchor from about 1e15 ms, and every
                        # check would take the log for replaced and rewind it.
                        stamp = broker_timestamp_ms(record.timestamp)
                        found[tp] = record_fingerprint(stamp, record.key, record.value)
                        next_records[tp] = record.offset
                    elif records and records[0].offset > wanted[tp]:
                        found[tp] = None  # compacted or skipped: the record is not there
                        next_records[tp] = records[0].offset
                read_now = [tp for tp in pending if tp in found]
                if read_now:
                    # With one partition a response (the cap above), aiokafka holds back the
                    # next fetch 0.1 s while a partition's fetched records wait unread: a probe
                    # of four partitions took 0.3-0.4 s (bench latency p50 0.76 s against
                    # 0.34). Paused, an answered partition's rest is dropped when asked for
                    # (nothing is returned, nothing waits), and the next fetch goes at once.
                    consumer.pause(*read_now)
                    await consumer.getmany(*read_now, timeout_ms=0)
                for tp in pending:
                    if tp in found:
                        continue
                    # The log's end, from a fetch answered after this probe began (a paused
                    # partition's is from an earlier probe), at or before the offset: no record.
                    high, answered = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
                    if high is not None and answered is not None and answered >= asked_ms and wanted[tp] >= high:
                        found[tp] = None
        finally:
            consumer.pause(*wanted)  # no fetching in the background between probes
            for tp, offset in wanted.items():
                consumer.seek(tp, offset)
        return {
            (tp.topic, tp.partition): LogProbe(
                offset=wanted[tp],
                fingerprint=found[tp],
                log_start=starts.get(tp, 0),
                high_water=consumer.highwater(tp),
                next_record=next_records.get(tp),
            )
            for tp in wanted
        }

    async def ping(self) -> None:
        """A metadata round trip: does the broker answer at all?"""
        async with self._lock:
            try:
                await within(self._topics(), self.timeout, "a metadata request")
            except BaseException:
                await self._drop_client()
                raise
        self.last_answer = time.monotonic()

    async def _topics(self) -> set[str]:
        topics: set[str] = await (await self._client()).topics()
        return topics

    async def rewind(self, topic: str, partition: int, offset: int) -> None:
        consumer: Any = self._app.consumer
        tp = TP(topic, partition)
        if consumer is None or self._app.rebalancing or tp not in consumer.assignment():
            return  # not ours, or not yet: the sink asks again after its retry interval
        # Faust keeps, per partition, the last offset it read, acked and committed, and drops
        # whatever it believes it has read already. Forget them as a revocation does (the
        # names are faust-streaming 0.15's), then seek: the new log is read from ``offset``.
        for table in ("_gap", "_acked", "_acked_index", "_read_offset", "_committed_offset"):
            getattr(consumer, table).pop(tp, None)
        await consumer.seek(tp, offset)
        log.info("partition rewound", topic=topic, partition=partition, offset=offset)

    async def _drop_client(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _stop(consumer)

    async def close(self) -> None:
        async with self._lock:
            await self._drop_client()


async def _stop(consumer: AIOKafkaConsumer) -> None:
    try:
        await within(consumer.stop(), 2.0, "stopping the probe client")
    except Exception:  # a broker that is gone cannot be said goodbye to
        log.debug("probe client stop failed", exc_info=True)
