"""The long-running processes: `run`, `worker`, `rater`, `broker` and `serve-clickhouse`."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from urllib.parse import urlsplit

import click

from bastionary.catalog import load_catalog
from bastionary.cli.common import ends_past_engine_teardown, engine_message, fail_cleanly, settings_or_exit
from bastionary.devstack.discovery import write_broker_file
from bastionary.kafka import KafkaTarget
from bastionary.locks import BROKER
from bastionary.runtime import connect_clickhouse, hold_for_process, resolve_kafka
from bastionary.settings import Settings
from bastionary.topics import Topics


def create_topics(settings: Settings, bootstrap: str) -> None:
    """Bastionary's topics exist before any producer can auto-create them with other partition counts."""
    from bastionary.kafka import ensure_topics

    topics = Topics(settings.topic_prefix)
    names = topics.all()

    async def created_and_counted() -> dict[str, int]:
        await ensure_topics(bootstrap, names, settings.usage_partitions, settings.topic_replication)
        return await partition_counts(bootstrap, names)

    counts = asyncio.run(created_and_counted())
    # The setting only shapes topics as they are created. A worker also takes it for the
    # topics' count when it works out which worker owns a customer (rating, dunning,
    # entitlements): over another count, customers the producers put on partitions it does
    # not name were rated by no worker, without a word. Only the topics workers consume: a
    # topic Bastionary only writes (dead letters, billing.credits, entitlements.changes) may
    # be repartitioned for its readers.
    written_only = {
        topics.usage_dlq,
        topics.billing_dlq,
        topics.dunning_dlq,
        topics.credits,
        topics.entitlement_changes,
    }
    others: dict[int, list[str]] = {}
    for name in (n for n in names if n not in written_only):
        if counts.get(name, settings.usage_partitions) != settings.usage_partitions:
            others.setdefault(counts[name], []).append(name)
    if others:
        found = "; ".join(
            f"{listed[0]} has {count}" if len(listed) == 1 else f"{listed[0]} and {len(listed) - 1} more have {count}"
            for count, listed in others.items()
        )
        raise click.ClickException(
            f"the topics exist with other partition counts than BASTIONARY_USAGE_PARTITIONS"
            f" ({settings.usage_partitions}): {found}; set BASTIONARY_USAGE_PARTITIONS to the topics' count"
            " (the setting does not change topics that exist)"
        )


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Each topic's partition count as the broker reports it (a topic it reports no
    partitions for yet, one just created, say, is left out)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {topic["topic"]: len(topic["partitions"]) for topic in described if topic.get("partitions")}


@click.command()
@ends_past_engine_teardown
@fail_cleanly
def run() -> None:
    """Everything in one process: the embedded broker when no bootstrap is set, and the worker."""
    from bastionary.devstack.broker import EmbeddedBroker
    from bastionary.worker.run import run_worker

    settings = settings_or_exit()
    load_catalog(settings.catalog)  # fail before anything starts
    port_free_or_exit(settings)
    clickhouse_answers_or_exit(settings)
    if settings.kafka_bootstrap:
        target = resolve_kafka(settings)
        create_topics(settings, target.bootstrap)
        run_worker(settings, target)
        return
    hold_for_process(settings.data_path, BROKER)

    def announce(embedded: EmbeddedBroker) -> None:
        create_topics(settings, embedded.bootstrap)
        write_broker_file(settings.data_path, KafkaTarget(embedded.bootstrap, embedded.started_at_ms))

    with EmbeddedBroker(settings.data_path) as embedded:
        announce(embedded)
        embedded.supervise(announce)
        run_worker(settings, KafkaTarget(embedded.bootstrap, embedded.started_at_ms))


@click.command()
@ends_past_engine_teardown
@fail_cleanly
def worker() -> None:
    """The Faust worker only; start several with one consumer group to scale out."""
    from bastionary.worker.run import run_worker

    settings = settings_or_exit()
    port_free_or_exit(settings)
    clickhouse_answers_or_exit(settings)
    target = resolve_kafka(settings)
    create_topics(settings, target.bootstrap)
    run_worker(settings, target)


def port_free_or_exit(settings: Settings) -> None:
    """The web port must be free before anything starts: Faust would find out only after the
    broker and the consumer group are up, and end with a traceback."""
    if not settings.web_port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.web_host, settings.web_port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {settings.web_host}:{settings.web_port} ({exc.strerror}): another process "
                "holds it; stop it, or set BASTIONARY_WEB_PORT to a free port"
            ) from None


def clickhouse_answers_or_exit(settings: Settings) -> None:
    """A ClickHouse server that does not answer at start is for the operator to fix: the
    worker's first query found out, and its error read as a bug of ours. (Embedded chdb is
    opened by the worker itself, or reached through its holder's gateway.)"""
    if settings.embedded_clickhouse:
        return
    try:
        handle = connect_clickhouse(settings, role="writer")
    except Exception as exc:
        reason = engine_message(exc)
        password = urlsplit(settings.clickhouse_url()).password
        if password:  # the client's words carry the address; never let them carry this
            reason = reason.replace(password, "***")
        raise click.ClickException(
            f"ClickHouse does not answer ({reason}): start it, or check BASTIONARY_CLICKHOUSE_DSN"
        ) from None
    handle.client.close()  # the worker opens its own


@click.command()
@ends_past_engine_teardown
@fail_cleanly
def rater() -> None:
    """The rater alone (billing intake and rating, no usage ingest), for server deployments.

    Run it in its own consumer group, and set BASTIONARY_RATING_ENABLED=false on the workers."""
    from bastionary.worker.run import run_worker

    settings = settings_or_exit()
    # A rater beside a worker on one host wants the same default port: Faust found out only
    # after chdb, the migrations and the consumer group, and ended with a traceback.
    port_free_or_exit(settings)
    clickhouse_answers_or_exit(settings)
    usage_group = settings.consumer_group  # the workers': their committed offsets say what has landed
    settings = settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-rater"})
    target = resolve_kafka(settings)
    create_topics(settings, target.bootstrap)
    run_worker(settings, target, usage=False, usage_group=usage_group)


@click.command()
@click.option("--port", type=int, default=None, help="Listen port (default: a free one).")
@fail_cleanly
def broker(port: int | None) -> None:
    """Run the embedded Kafka-protocol broker in the foreground."""
    from bastionary.devstack.broker import EmbeddedBroker

    settings = settings_or_exit()
    hold_for_process(settings.data_path, BROKER)
    with EmbeddedBroker(settings.data_path, port) as embedded:
        create_topics(settings, embedded.bootstrap)
        write_broker_file(settings.data_path, KafkaTarget(embedded.bootstrap, embedded.started_at_ms))
        click.echo(f"broker ready: {embedded.bootstrap} (Ctrl-C stops it)")
        _wait_for_signal()


def _wait_for_signal() -> None:
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)


@click.command("serve-clickhouse")
@ends_past_engine_teardown
@fail_cleanly
def serve_clickhouse() -> None:
    """Hold the embedded chdb directory and serve it over HTTP for several workers.

    chdb admits one process per directory: with several `bastionary worker` processes on one
    machine, run this once and point every worker at its writer DSN.
    """
    from bastionary.devstack.discovery import gateway_file
    from bastionary.devstack.gateway import QueryGateway, reader_limits, write_gateway_file
    from bastionary.worker.run import gateway_credentials

    settings = settings_or_exit()
    if not settings.embedded_clickhouse:
        raise click.ClickException("serve-clickhouse is for the embedded chdb:// DSN; a server needs no gateway")
    handle = connect_clickhouse(settings, role="writer")
    if not handle.in_process:
        raise click.ClickException(f"the chdb directory is already served ({handle.dsn_description})")
    credentials = gateway_credentials(settings)
    path = gateway_file(settings.data_path)

    async def serve() -> None:
        gateway = QueryGateway(
            handle.client,
            credentials,
            database=settings.database,
            reader_limits=reader_limits(settings.query_timeout.total_seconds(), settings.query_max_result_bytes),
        )
        port = await gateway.start(settings.query_host, settings.query_port)
        write_gateway_file(path, settings.query_host, port, credentials, settings.database)
        click.echo(f"serving {settings.clickhouse_url()} at http://{settings.query_host}:{port}", err=True)
        click.echo(f"the writer and reader DSNs (with their passwords) are in {path}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gateway.stop()

    try:
        asyncio.run(serve())
    finally:
        path.unlink(missing_ok=True)
