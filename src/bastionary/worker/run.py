"""Starting a worker process: storage first (migrations, dedupe cache), then Faust."""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import faust
import structlog
from pydantic import SecretStr

from bastionary.catalog import load_catalog
from bastionary.devstack.discovery import gateway_file
from bastionary.eventloop import use_event_loop
from bastionary.kafka import KafkaTarget
from bastionary.locks import worker_part
from bastionary.malloc_arenas import limit_malloc_arenas
from bastionary.metering.logs import PartitionLog
from bastionary.metering.records import FlushStats
from bastionary.metering.sink import DeadLetterSender, SinkConfig, UsageSink
from bastionary.runtime import connect_clickhouse, hold_for_process
from bastionary.settings import Settings
from bastionary.storage.client import Client, open_client, skip_numpy_and_pandas_imports
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.worker.app import Billing, create_app
from bastionary.worker.collecting import BoundaryCollector
from bastionary.worker.flushing import flush_engine

if TYPE_CHECKING:
    from bastionary.devstack.gateway import GatewayCredentials

log = structlog.get_logger(__name__)


def gateway_credentials(settings: Settings) -> GatewayCredentials:
    from bastionary.devstack.gateway import GatewayCredentials

    def secret(value: SecretStr | None) -> str:
        return value.get_secret_value() if value is not None else secrets.token_urlsafe(18)

    return GatewayCredentials(
        reader_user="reader",
        reader_password=secret(settings.query_reader_password),
        writer_user="writer",
        writer_password=secret(settings.query_writer_password),
    )


def run_worker(settings: Settings, kafka: KafkaTarget, usage: bool = True, usage_group: str | None = None) -> None:
    """Run one Faust worker until it is stopped (SIGTERM/SIGINT); blocks.

    ``usage=False`` runs the billing agents and the rater alone (`bastionary rater`), which
    rates as far as the consumer group ``usage_group`` has landed usage."""
    limit_malloc_arenas()  # before any thread exists
    skip_numpy_and_pandas_imports()  # before the first insert (the migrations')
    use_event_loop(settings.event_loop)  # before any loop exists
    catalog = load_catalog(settings.catalog)
    worker_id = settings.worker_id or f"worker-{os.getpid()}"
    settings = settings.model_copy(update={"worker_id": worker_id})
    hold_for_process(settings.data_path, worker_part(worker_id))  # its dedupe cache and Faust state
    handle = connect_clickhouse(settings, role="writer")
    ClickHouseUsageStore(handle.client).migrate()
    config = SinkConfig(
        worker_id=worker_id,
        log_epoch=kafka.log_epoch,
        rewind_retry_seconds=max(5.0, 5 * settings.log_check_interval.total_seconds()),
    )
    engine = flush_engine(settings, catalog.meters, handle, settings.data_path / "dedupe" / worker_id)

    def sink_factory(
        send_dead_letters: DeadLetterSender,
        on_flushed: Callable[[str, int, FlushStats], None],
        partition_log: PartitionLog,
    ) -> UsageSink:
        return UsageSink(engine, send_dead_letters, config, partition_log, on_flushed)

    gateway_path: Path | None = None
    serve_gateway: Callable[[faust.App], Awaitable[None]] | None = None
    if handle.in_process:
        from bastionary.devstack.gateway import QueryGateway, reader_limits, write_gateway_file

        credentials = gateway_credentials(settings)
        gateway = QueryGateway(
            handle.client,
            credentials,
            database=settings.database,
            reader_limits=reader_limits(settings.query_timeout.total_seconds(), settings.query_max_result_bytes),
        )
        gateway_path = gateway_file(settings.data_path)

        async def serve_gateway(app: faust.App) -> None:
            # This process holds chdb: serve it to the CLI, analysts and other workers.
            port = await gateway.start(settings.query_host, settings.query_port)
            write_gateway_file(gateway_path, settings.query_host, port, credentials, settings.database)
            log.info("query gateway serving", url=f"http://{settings.query_host}:{port}", database=settings.database)

    from bastionary.storage.billing import ClickHouseBillingStore

    def reader() -> Client:
        # The API's reads: a server's read-only user when one is configured; in-process chdb
        # has one client; another worker's gateway has a read-only role.
        if settings.clickhouse_reader_dsn is not None:
            return open_client(
                settings.clickhouse_reader_dsn.get_secret_value(),
                settings.database,
                compression=settings.clickhouse_compression,
            )
        return handle.client if handle.in_process else connect_clickhouse(settings, role="reader").client

    billing = Billing(catalog, lambda: ClickHouseBillingStore(handle.client), reader, usage_group)
    collector = BoundaryCollector()
    app = create_app(
        settings,
        kafka.bootstrap,
        sink_factory,
        on_started=serve_gateway,
        billing=billing,
        usage=usage,
        collector=collector,
    )
    log.info(
        "worker starting",
        worker_id=worker_id,
        bootstrap=kafka.bootstrap,
        log_epoch=kafka.log_epoch,
        clickhouse=handle.dsn_description,
        meters=len(catalog.meters),
        event_loop=settings.event_loop,
    )
    faust_level = "INFO" if settings.log_level == "DEBUG" else "WARNING"
    worker = faust.Worker(app, loglevel=faust_level, quiet=True, redirect_stdouts=False, override_logging=False)
    # Faust's start-up spinner writes backspaces and a cursor escape to stdout even when it is
    # not a terminal; the worker's output must stay pure JSON lines.
    worker.spinner = None
    # The interpreter's switch interval follows the requests (worker/switching.py).
    try:
        worker.execute_from_commandline()
    finally:
        if gateway_path is not None:
            gateway_path.unlink(missing_ok=True)
        engine.close()
        handle.client.close()
