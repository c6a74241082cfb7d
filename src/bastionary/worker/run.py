"""Starting a worker process: storage first (migrations, dedupe cache), then Faust."""

from __future__ import annotations

import functools
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from bastionary.runtime import ClickHouseHandle, connect_clickhouse, hold_for_process
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


def api_reader(settings: Settings, handle: ClickHouseHandle) -> Client:
    """The client the HTTP API reads through: a server's read-only user when one is configured;
    another worker's gateway, whose reader role has the query limits; or, with chdb in this
    process, a connection of its own to the engine, with the gateway readers' limits."""
    if settings.clickhouse_reader_dsn is not None:
        return open_client(
            settings.clickhouse_reader_dsn.get_secret_value(),
            settings.database,
            compression=settings.clickhouse_compression,
        )
    if not handle.in_process:
        return connect_clickhouse(settings, role="reader").client
    import clickhouse_connect

    from bastionary.devstack.gateway import reader_limits

    # The API read through the writer's own client: no BASTIONARY_QUERY_TIMEOUT or
    # BASTIONARY_QUERY_MAX_RESULT_BYTES (those were the gateway's alone), and a slow read held
    # that client's lock, so the worker's flushes and billing queries waited behind it.
    limits = reader_limits(settings.query_timeout.total_seconds(), settings.query_max_result_bytes)
    path, database = handle.client.path, settings.database
    return ChdbReader(
        lambda: clickhouse_connect.get_client(interface="chdb", path=path, database=database, settings=limits)
    )


class ChdbReader:
    """Reads on connections of their own to this process's chdb engine, each opened by
    ``connect``; every call takes an idle one (or opens one) and gives it back when it
    succeeded. A connection whose call failed is closed, never used again: chdb hands the rows a
    failed query had produced (one stopped at a limit, say) to the connection's next query, as
    the start of its answer, which could be another customer's read."""

    def __init__(self, connect: Callable[[], Client]):
        self._connect = connect
        self._idle: list[Client] = []
        self._lock = threading.Lock()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self._call, method)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        try:
            answer = getattr(connection, method)(*args, **kwargs)
        except BaseException:
            connection.close()
            raise
        with self._lock:
            self._idle.append(connection)
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


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

    readers: list[Client] = []

    def reader() -> Client:
        readers.append(api_reader(settings, handle))
        return readers[-1]

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
        for opened in readers:
            opened.close()
        handle.client.close()
