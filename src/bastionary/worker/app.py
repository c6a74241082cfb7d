"""The Faust app factory: every service of a worker, and the HTTP API, on one Faust app.

All Faust wiring lives in this package: the services (``services/``) hold what each domain
runs on the app (agents, timers, tasks), and ``api/`` holds the web views.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
import structlog

from bastionary.catalog import Catalog
from bastionary.eventloop import running_loop_name
from bastionary.settings import Settings
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import Client
from bastionary.worker import api, tolerant_records
from bastionary.worker.api.failures import failures_as_json
from bastionary.worker.collecting import BoundaryCollector
from bastionary.worker.context import WorkerContext
from bastionary.worker.direct_delivery import deliver_directly
from bastionary.worker.loop_lag import probe_loop_lag
from bastionary.worker.services.api import ApiBackend
from bastionary.worker.services.billing import BillingService
from bastionary.worker.services.dunning import DunningService
from bastionary.worker.services.entitlements import EntitlementService
from bastionary.worker.services.usage import SinkFactory, UsageService
from bastionary.worker.switching import SwitchInterval
from bastionary.worker.usage_landed import UsageLanded

log = structlog.get_logger(__name__)


def _shorten_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer; brokers that hold a fetch
    open that long (Tansu does) add up to 1.5 s to every event's latency. The value is read
    from the consumer object when it starts, so set it right after Faust creates it."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_class = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_class, "_bastionary_original_create", thread_class._create_worker_consumer)

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        consumer = original(self, *args, **kwargs)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    # A patch of Faust's class, which has neither the marker attribute nor a settable method.
    thread_class._bastionary_original_create = original  # type: ignore[attr-defined]
    thread_class._create_worker_consumer = create  # type: ignore[method-assign]


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


@dataclass(frozen=True)
class Billing:
    """What the billing, dunning and entitlement services need: the catalog and storage."""

    catalog: Catalog
    store_factory: Callable[[], ClickHouseBillingStore]
    # The HTTP API's reads; default: the billing store's client. A worker writing to a
    # ClickHouse server passes a read-only one.
    reader_factory: Callable[[], Client] | None = None
    # The consumer group of the workers that land usage, whose committed offsets tell the
    # rater how far usage has landed; default: this app's own (`bastionary rater` has its own).
    usage_group: str | None = None


def create_app(
    settings: Settings,
    bootstrap: str,
    sink_factory: SinkFactory,
    on_started: Callable[[Any], Awaitable[None]] | None = None,
    billing: Billing | None = None,
    usage: bool = True,
    collector: BoundaryCollector | None = None,
) -> faust.App:
    """Build the worker's app. Storage opens lazily, at start: ``sink_factory(send_dead_letters,
    on_flushed, partition_log)`` and ``billing.store_factory()``. ``usage=False`` runs billing
    alone (``bastionary rater``). A ``collector`` (:mod:`bastionary.worker.collecting`) takes
    garbage collection over at its timer's first tick, then collects after each flush and on
    that timer."""
    worker_id = settings.worker_id or f"worker-{os.getpid()}"
    (settings.data_path / "faust").mkdir(parents=True, exist_ok=True)
    _shorten_fetch_wait(int(settings.kafka_fetch_max_wait.total_seconds() * 1000))
    tolerant_records.install()
    switch_interval = SwitchInterval()
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
        stream_buffer_maxsize=settings.stream_buffer_records,
        # Records wait unacked in the sink's buffers until they land; on a rebalance the
        # revoked ones are dropped for the next owner, so Faust must not wait for their acks.
        stream_wait_empty=False,
        web_enabled=settings.web_port != 0,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # web_host alone only names the URL; Faust binds 0.0.0.0 without this
        web_port=settings.web_port or 6066,
        # Checks are routed between workers by this address (Faust table routing).
        canonical_url=settings.advertised_web_url(),
        # Faust's own /table and /router pages would serve every customer's entitlements and
        # the workers' addresses on the API port without a key. Checks reach a key's owner
        # through app.router in Python and our own /v1 views (api/entitlements.py), not these.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_in_thread=False,
        # The API answers every failure as JSON (worker/api/failures.py); a body may be as
        # large as a Kafka record, and /v1/events refuses a larger one itself, as JSON.
        web_application_options={
            "middlewares": [switch_interval.middleware(), failures_as_json],
            "client_max_size": settings.max_record_bytes + 64 * 1024,
        },
    )
    deliver_directly(app.transport)  # records reach the conductor without four tasks each
    ctx = WorkerContext(app, settings, worker_id)

    async def settle_switch_interval() -> None:
        switch_interval.settle()

    app.timer(interval=0.5)(settle_switch_interval)

    async def lag_probe() -> None:  # no parameters: Faust passes the app to a task that takes one
        log.info("event loop running", event_loop=running_loop_name())
        await probe_loop_lag()

    app.task(lag_probe)
    if collector is not None:

        async def collect_when_idle() -> None:
            if collector.taken_over:
                collector.on_clock()
            else:  # the first tick: the app has started, and what it made is frozen with the rest
                collector.take_over()

        app.timer(interval=0.5)(collect_when_idle)
    usage_service = UsageService(ctx, bootstrap, sink_factory, on_started, collector)
    usage_service.install(ingest=usage)
    dunning_service = entitlement_service = None
    backend: ApiBackend | None = None
    if billing is not None:
        landed = UsageLanded(bootstrap, billing.usage_group or settings.consumer_group, ctx.topics.usage_events)
        billing_service = BillingService(ctx, billing.catalog, billing.store_factory, landed.through)
        if usage:
            billing_service.watch_limits(lambda: usage_service.sink)
        billing_service.install()

        def client() -> Any:
            return billing_service.store().client

        if usage:
            # Not in `bastionary rater`, which runs in a consumer group of its own beside the
            # workers: dunning there would decide every case twice and deliver every notice
            # twice, once per group. The workers run it.
            dunning_service = DunningService(ctx, billing.catalog, client, billing_service.owns)
            dunning_service.install()
            entitlement_service = EntitlementService(ctx, billing.catalog, client, usage_service)
            entitlement_service.install()
            billing_service.on_limit_change = entitlement_service.limits_changed
        backend = ApiBackend(ctx, billing.catalog, billing.reader_factory or client, client)
    api.install(
        app,
        settings,
        worker_id,
        usage=usage_service,
        backend=backend,
        dunning_service=dunning_service,
        entitlement_service=entitlement_service,
    )
    app.bastionary_worker_id = worker_id  # type: ignore[attr-defined]
    return app
