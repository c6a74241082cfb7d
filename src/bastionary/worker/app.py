"""The Faust app factory: topics, the usage agent, the flush timer and the web views."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import faust
from faust.types import TP
import structlog
from aiohttp.web import Response
from prometheus_client import generate_latest

from bastionary import metrics
from bastionary.metering.sink import Admission, DeadLetter, FlushStats, InboundRecord, UsageSink
from bastionary.settings import Settings
from bastionary.topics import Topics
from bastionary.worker import tolerant_records
from bastionary.worker.health import health_report
from bastionary.worker.partition_log import KafkaPartitionLog

log = structlog.get_logger(__name__)


def _shorten_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer; brokers that hold a fetch
    open that long (Tansu does) add up to 1.5 s to every event's latency. The value is read
    from the consumer object when it starts, so set it right after Faust creates it."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_class = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_class, "_bastionary_original_create", thread_class._create_worker_consumer)

    def create(self, *args, **kwargs):
        consumer = original(self, *args, **kwargs)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    thread_class._bastionary_original_create = original
    thread_class._create_worker_consumer = create


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(
    settings: Settings, bootstrap: str, sink_factory, on_started=None, billing=None, usage: bool = True
) -> faust.App:
    """Build the worker's app. ``sink_factory(send_dead_letters, on_flushed, partition_log)``
    opens storage lazily, at start; ``billing`` = (catalog, store_factory) adds the billing
    agents and rater."""
    topics = Topics(settings.topic_prefix)
    worker_id = settings.worker_id or f"worker-{os.getpid()}"
    (settings.data_path / "faust").mkdir(parents=True, exist_ok=True)
    _shorten_fetch_wait(int(settings.kafka_fetch_max_wait.total_seconds() * 1000))
    tolerant_records.install()
    app = faust.App(
        settings.consumer_group,
        broker=broker_url(bootstrap),
        autodiscover=False,
        datadir=str(settings.data_path / "faust" / worker_id),
        store="memory://",
        topic_partitions=settings.usage_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka_session_timeout.total_seconds(),
        broker_heartbeat_interval=max(0.5, settings.kafka_session_timeout.total_seconds() / 5),
        producer_acks=-1,
        producer_linger_ms=5,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=16384,
        # Records wait unacked in the sink's buffers until they land; on a rebalance the
        # revoked ones are dropped for the next owner, so Faust must not wait for their acks.
        stream_wait_empty=False,
        web_enabled=settings.web_port != 0,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # web_host alone only names the URL; Faust binds 0.0.0.0 without this
        web_port=settings.web_port or 6066,
        # Checks are routed between workers by this address (Faust table routing).
        canonical_url=settings.web_url or f"http://{settings.web_host}:{settings.web_port or 6066}",
        web_in_thread=False,
    )
    usage_topic = app.topic(
        topics.usage_events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.usage_partitions,
    )
    dlq_topic = app.topic(
        topics.usage_dlq, key_serializer="raw", value_serializer="raw", partitions=settings.usage_partitions
    )

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        pending = [
            await dlq_topic.send(key=letter.key, value=letter.value, headers=letter.headers) for letter in letters
        ]
        await asyncio.gather(*pending)  # delivered before the flush goes on

    def record_stats(topic: str, partition: int, stats: FlushStats) -> None:
        metrics.EVENTS_ACCEPTED.inc(stats.accepted)
        metrics.EVENTS_DUPLICATE.inc(stats.duplicates)
        for code, count in stats.by_error.items():
            metrics.EVENTS_DEAD_LETTERED.labels(code).inc(count)

    state: dict = {"sink": None, "stream": None}
    flush_needed = asyncio.Event()
    max_buffer = settings.flush_max_events
    max_bytes = settings.flush_max_bytes
    partition_log = KafkaPartitionLog(bootstrap, app)
    started_at = time.monotonic()

    def sink() -> UsageSink:
        if state["sink"] is None:
            created = sink_factory(send_dead_letters, record_stats, partition_log)
            created.on_log_reset = lambda topic, partition: metrics.LOG_RESETS.labels(topic, str(partition)).inc()
            state["sink"] = created
        return state["sink"]

    async def flush_once() -> None:
        started = time.perf_counter()
        landed = await sink().flush()
        if landed:
            metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
            stream = state["stream"]
            for record in landed:
                await stream.ack(record.handle)

    async def usage_ingest(stream):
        stream = stream.noack()
        state["stream"] = stream
        usage_sink = sink()
        async for event in stream.events():
            message = event.message
            metrics.RECORDS_RECEIVED.inc()
            record = InboundRecord(
                message.topic,
                message.partition,
                message.offset,
                # No timestamp (-1) is dead-lettered, never replaced by the wall clock: a replay
                # must judge the record as before.
                round(message.timestamp * 1000) if message.timestamp is not None else -1,
                message.key,
                message.value,
                list(message.headers or ()),
                event,
            )
            try:
                admission = await usage_sink.admit(record)
            except Exception:
                log.exception("partition recovery failed; stopping the worker so a restart can retry")
                await app.crash(RuntimeError("usage partition recovery failed"))
                return
            if admission is Admission.LANDED:
                await stream.ack(event)
                continue
            if admission is Admission.STALE:
                continue  # read before a rewind: the new log brings it again if it is there
            buffered, buffered_bytes = usage_sink.buffered(), usage_sink.buffered_bytes()
            if buffered >= max_buffer or buffered_bytes >= max_bytes:
                flush_needed.set()
            if buffered >= 4 * max_buffer or buffered_bytes >= 4 * max_bytes:
                await flush_once()  # backpressure: stop reading until the backlog lands

    if usage:
        app.agent(usage_topic, name="usage-ingest")(usage_ingest)

    @app.task
    async def flusher() -> None:
        if on_started is not None:
            await on_started(app)
        interval = settings.flush_interval.total_seconds()
        started = time.monotonic()
        while True:
            # A fixed rate, not a fixed pause: a flush that took its time does not push the
            # next one a whole interval further (usage reaches checks and queries sooner).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(flush_needed.wait(), timeout=max(0.05, started + interval - time.monotonic()))
            flush_needed.clear()
            started = time.monotonic()
            if state["stream"] is None:
                continue
            try:
                await flush_once()
            except Exception:
                # The buffers are kept unacked; the worker stops so a restart replays them.
                log.exception("flush failed; stopping the worker so a restart can replay")
                await app.crash(RuntimeError("usage flush failed"))
                return

    @app.task
    async def log_watch() -> None:
        """Catch a replaced log between flushes; keep the broker's last answer fresh for /healthz."""
        interval = settings.log_check_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await partition_log.ping()
                if state["sink"] is not None and state["stream"] is not None:
                    assigned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()
                                if tp.topic == usage_topic.get_topic_name()}
                    await state["sink"].check_logs(assigned)
            except Exception as exc:
                log.warning("log check failed; the broker may be unreachable", error=f"{type(exc).__name__}: {exc}")

    @app.task
    async def dedupe_purge() -> None:
        """Entries past the horizon count as new events anyway; dropping them bounds the disk."""
        interval = settings.dedupe_purge_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            usage_sink = state["sink"]
            if usage_sink is None:
                continue
            try:
                purged = await asyncio.to_thread(usage_sink.dedupe.purge_expired)
            except Exception:
                log.exception("dedupe purge failed; retried at the next interval")
                continue
            metrics.DEDUPE_PURGED.inc(purged)
            if purged:
                log.info("dedupe cache purged", keys=purged)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        if state["sink"] is not None:
            await state["sink"].release([(tp.topic, tp.partition) for tp in revoked])

    @app.page("/metrics")
    async def metrics_view(web, request):
        usage_sink = state["sink"]
        if usage_sink is not None and app.consumer is not None:
            for (topic, partition), done in usage_sink.last_landed().items():
                with contextlib.suppress(Exception):
                    high = app.consumer.highwater(TP(topic, partition))
                    metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(0, (high or 0) - done - 1))
        return Response(body=generate_latest(metrics.REGISTRY), content_type="text/plain")

    @app.page("/healthz")
    async def health_view(web, request):
        report = health_report(
            worker_id,
            state["sink"],
            partition_log.last_answer,
            app.consumer,
            started_at=started_at,
            stall_after=settings.stall_timeout.total_seconds(),
            broker_silence=3 * settings.log_check_interval.total_seconds() + partition_log.timeout,
        )
        return web.json(report, status=200 if report["status"] == "ok" else 503)

    if billing is not None:
        from bastionary.worker.billing import install_billing

        install_billing(app, settings, *billing, sink=sink if usage else None)
    app.bastionary_worker_id = worker_id
    return app
