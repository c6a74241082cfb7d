"""The usage service: the ingest agent on ``usage.events``, the flush timer, the log check and
the dedupe purge, around one :class:`bastionary.metering.sink.UsageSink`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from faust.types import TP

from bastionary import metrics
from bastionary.ingest.errors import ErrorClass
from bastionary.metering.logs import PartitionLog
from bastionary.metering.records import DeadLetter, FlushStats
from bastionary.metering.sink import UsageSink
from bastionary.worker.collecting import BoundaryCollector
from bastionary.worker.context import WorkerContext
from bastionary.worker.deadline import keep_checking
from bastionary.worker.partition_log import KafkaPartitionLog
from bastionary.worker.services.usage_intake import UsageIntake, UsageTopic

log = structlog.get_logger(__name__)

SinkFactory = Callable[
    [Callable[[list[DeadLetter]], Awaitable[None]], Callable[[str, int, FlushStats], None], PartitionLog], UsageSink
]


class UsageService:
    def __init__(
        self,
        ctx: WorkerContext,
        bootstrap: str,
        sink_factory: SinkFactory,
        on_started: Callable[[Any], Awaitable[None]] | None = None,
        collector: BoundaryCollector | None = None,
    ):
        self.ctx = ctx
        self.collector = collector
        self.partition_log = KafkaPartitionLog(bootstrap, ctx.app)
        self.started_at = time.monotonic()
        self.rebalancing_since: float | None = None  # as the log check last saw it
        self._sink_factory = sink_factory
        self._on_started = on_started
        self._sink: UsageSink | None = None
        self._ingesting = False  # usage intake installed (a rater-only worker has none)
        self._flush_needed = asyncio.Event()
        self.topic = ctx.topic(ctx.topics.usage_events)
        settings = ctx.settings
        self.intake = UsageIntake(
            ctx.app,
            lambda: self.sink,
            settings.flush_max_events,
            settings.flush_max_bytes,
            self._flush_needed,
            self._flush_once,
        )
        self._dlq = ctx.topic(ctx.topics.usage_dlq)
        metrics.start_at_zero(metrics.EVENTS_DEAD_LETTERED, [(code.value,) for code in ErrorClass])
        # A log reset is rare and grave: an alert on increase() must see its first one.
        partitions = range(settings.usage_partitions)
        metrics.start_at_zero(metrics.LOG_RESETS, [(ctx.topics.usage_events, str(n)) for n in partitions])

    @property
    def sink(self) -> UsageSink:
        """Opened at first use, when the worker starts (storage is not touched before)."""
        if self._sink is None:
            sink = self._sink_factory(self._send_dead_letters, _record_stats, self.partition_log)
            sink.on_log_reset = lambda topic, partition: metrics.LOG_RESETS.labels(topic, str(partition)).inc()
            self._sink = sink
        return self._sink

    @property
    def opened_sink(self) -> UsageSink | None:
        return self._sink

    def install(self, *, ingest: bool = True) -> None:
        app = self.ctx.app
        self._ingesting = ingest
        if ingest:
            # Records reach the intake from the conductor, not through an agent's stream
            # (services/usage_intake.py says why).
            app.topics.add(
                UsageTopic(
                    app,
                    topics=[self.topic.get_topic_name()],
                    key_serializer="raw",
                    value_serializer="raw",
                    partitions=self.ctx.settings.usage_partitions,
                    intake=self.intake,
                )
            )
        app.task(self._flusher)
        app.task(self._log_watch)
        app.task(self._dedupe_purge)
        # mode types a receiver as taking any positional arguments after the sender; this
        # signal sends exactly one, the revoked partitions.
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    # -- the agent and the flushes -------------------------------------------------------

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        pending = [
            await self._dlq.send(key=letter.key, value=letter.value, headers=letter.headers) for letter in letters
        ]
        await asyncio.gather(*pending)  # delivered before the flush goes on

    async def _flush_once(self) -> None:
        started = time.perf_counter()
        landed = await self.sink.flush()
        if landed:
            metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
            for record in landed:
                self.intake.ack(record)
            # Between flushes: the plan is gone. If another flush holds the lock, its plan may be
            # alive in the flush thread; the collection waits for that flush's own end.
            if self.collector is not None and not self.sink.lock.locked():
                self.collector.after_flush()

    async def _flusher(self) -> None:
        if self._on_started is not None:
            await self._on_started(self.ctx.app)
        if self._ingesting:
            # Opened now, not at the first record: the log check must recover assigned
            # partitions that no record reaches (a consumer waiting past the end of a new,
            # shorter log; UsageSink.check_logs).
            try:
                self.sink  # noqa: B018 - the property opens the storage
            except Exception:
                log.exception("usage storage did not open; stopping the worker so a restart can retry")
                await self.ctx.app.crash(RuntimeError("usage storage did not open"))
                return
        interval = self.ctx.settings.flush_interval.total_seconds()
        started = time.monotonic()
        while True:
            # A fixed rate, not a fixed pause: a flush that took its time does not push the
            # next one a whole interval further (usage reaches checks and queries sooner).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._flush_needed.wait(), timeout=max(0.05, started + interval - time.monotonic())
                )
            self._flush_needed.clear()
            started = time.monotonic()
            if not self._ingesting:
                continue
            try:
                await self._flush_once()
            except Exception:
                # The buffers are kept unacked; the worker stops so a restart replays them.
                log.exception("flush failed; stopping the worker so a restart can replay")
                await self.ctx.app.crash(RuntimeError("usage flush failed"))
                return

    # -- watching the broker, bounding the cache -----------------------------------------

    async def _log_watch(self) -> None:
        """Catch a replaced log between flushes; keep the broker's last answer fresh for /healthz.

        Nothing may end or freeze this loop: without it /healthz reports a silent broker for
        good and a log replaced while nothing is flushed goes unnoticed. A round that fails,
        leaks a ``CancelledError`` from the Kafka client or hangs is logged and the next one
        starts on time; rounds that keep hanging past the stall timeout stop the worker, so
        its supervisor restarts it.
        """
        settings = self.ctx.settings
        await keep_checking(
            self._check_logs_once,
            interval=settings.log_check_interval.total_seconds(),
            deadline=3 * self.partition_log.timeout,
            give_up_after=settings.stall_timeout.total_seconds(),
            what="the log check (is the broker reachable?)",
        )
        log.error("log checks have hung past the stall timeout; stopping the worker so a restart can recover")
        await self.ctx.app.crash(RuntimeError("the log check hangs"))

    async def _check_logs_once(self) -> None:
        await self.partition_log.ping()
        app = self.ctx.app
        if app.rebalancing:
            # The assignment is in flux: Faust has revoked every partition and the consumer
            # still reports the old ones. Recovering or rewinding now would move a consumer
            # that is rejoining its group; the partitions are checked once they are assigned.
            self.rebalancing_since = self.rebalancing_since or time.monotonic()
            return
        self.rebalancing_since = None
        if self._sink is not None and self._ingesting:
            assigned = {
                (tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic == self.topic.get_topic_name()
            }
            await self._sink.check_logs(assigned, lock_wait=self.partition_log.timeout)

    async def _dedupe_purge(self) -> None:
        """Entries past the horizon count as new events anyway; dropping them bounds the disk."""
        interval = self.ctx.settings.dedupe_purge_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            if self._sink is None:
                continue
            try:
                purged = await asyncio.to_thread(self._sink.engine.purge_expired)
            except Exception:
                log.exception("dedupe purge failed; retried at the next interval")
                continue
            metrics.DEDUPE_PURGED.inc(purged)
            if purged:
                log.info("dedupe cache purged", keys=purged)

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        if self._sink is not None:
            await self._sink.release([(tp.topic, tp.partition) for tp in revoked])
        for tp in revoked:
            # The new owner reports it now; kept here, summed lag would never drain to 0.
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    def update_lag_metrics(self) -> None:
        consumer = self.ctx.app.consumer
        if self._sink is None or consumer is None:
            return
        for (topic, partition), done in self._sink.last_landed().items():
            with contextlib.suppress(Exception):
                high = consumer.highwater(TP(topic, partition))
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(0, (high or 0) - done - 1))


def _record_stats(topic: str, partition: int, stats: FlushStats) -> None:
    metrics.EVENTS_ACCEPTED.inc(stats.accepted)
    metrics.EVENTS_DUPLICATE.inc(stats.duplicates)
    for code, count in stats.by_error.items():
        metrics.EVENTS_DEAD_LETTERED.labels(code).inc(count)
