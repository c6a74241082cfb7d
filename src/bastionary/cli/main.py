"""``bastionary``: run the pipeline, publish usage, and query it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson

from bastionary.catalog import CatalogError, load_catalog
from bastionary.cli.common import emit as _emit
from bastionary.cli.common import jsonable as _jsonable
from bastionary.cli.common import number as _number
from bastionary.cli.common import reader_client as _reader_client
from bastionary.cli.common import settings_or_exit as _settings
from bastionary.cli.dunning import clock, dunning
from bastionary.cli.entitlements import entitlements
from bastionary.devstack.discovery import write_broker_file
from bastionary.kafka import KafkaTarget
from bastionary.locks import BROKER, DataDirInUse
from bastionary.logs import configure_logging
from bastionary.runtime import NoBroker, connect_clickhouse, hold_for_process, resolve_kafka
from bastionary.settings import Settings
from bastionary.storage.queries import usage_query
from bastionary.topics import Topics


def _fail_cleanly(fn):
    """Known start-up problems become one readable line, not a traceback."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CatalogError, NoBroker, DataDirInUse) as exc:
            raise click.ClickException(str(exc)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group()
@click.version_option(package_name="bastionary")
def cli() -> None:
    """Self-hosted usage billing on Kafka, Faust and ClickHouse."""


@cli.command("config")
@click.option("--validate", is_flag=True, help="Also check that the broker and ClickHouse answer; exit 1 if not.")
def config_cmd(validate: bool) -> None:
    """Print the effective configuration (secrets masked), after checking settings and catalog."""
    settings = _settings()
    try:
        catalog = load_catalog(settings.catalog)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    out = settings.redacted() | {"meters": [m.key for m in catalog.meters]}
    click.echo(json.dumps(out, indent=2))
    if validate:
        answers = [_broker_answers(settings), _clickhouse_answers(settings)]
        for ok, line in answers:
            click.echo(("ok: " if ok else "FAILED: ") + line, err=True)
        if not all(ok for ok, _ in answers):
            raise SystemExit(1)


def _broker_answers(settings: Settings) -> tuple[bool, str]:
    from bastionary.kafka import list_topics

    try:
        bootstrap = resolve_kafka(settings).bootstrap
    except NoBroker as exc:
        return False, f"broker: {exc}"
    try:
        topics = asyncio.run(asyncio.wait_for(list_topics(bootstrap), 10))
    except Exception as exc:
        return False, f"broker {bootstrap} does not answer: {type(exc).__name__}: {exc}"
    return True, f"broker {bootstrap} answers ({len(topics)} topics)"


def _clickhouse_answers(settings: Settings) -> tuple[bool, str]:
    try:
        handle = connect_clickhouse(settings, role="reader")
        version = handle.client.command("SELECT version()")
    except Exception as exc:
        if "UNKNOWN_DATABASE" in str(exc):  # it answered; the first worker creates the database
            return True, f"ClickHouse answers; database {settings.database} does not exist yet (a worker creates it)"
        return False, f"ClickHouse does not answer: {_engine_message(exc)}"
    return True, f"ClickHouse {version} answers ({handle.dsn_description})"


@cli.command()
@click.option("--port", type=int, default=None, help="Listen port (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-protocol broker in the foreground."""
    from bastionary.devstack.broker import EmbeddedBroker

    settings = _settings()
    hold_for_process(settings.data_path, BROKER)
    with EmbeddedBroker(settings.data_path, port) as embedded:
        # Bastionary's topics exist before any producer can create them with other partition counts.
        _create_topics(settings, embedded.bootstrap)
        write_broker_file(settings.data_path, KafkaTarget(embedded.bootstrap, embedded.started_at_ms))
        click.echo(f"broker ready: {embedded.bootstrap} (Ctrl-C stops it)")
        _wait_for_signal()


def _wait_for_signal() -> None:
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)


@cli.command("serve-clickhouse")
def serve_clickhouse() -> None:
    """Hold the embedded chdb directory and serve it over HTTP for several workers.

    chdb admits one process per directory: with several `bastionary worker` processes on one
    machine, run this once and point every worker at its writer DSN.
    """
    from bastionary.devstack.discovery import gateway_dsn, gateway_file, read_gateway_file
    from bastionary.devstack.gateway import QueryGateway, reader_limits, write_gateway_file
    from bastionary.worker.run import gateway_credentials

    settings = _settings()
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
        info = read_gateway_file(path)
        click.echo(f"serving {settings.clickhouse_url()} at http://{settings.query_host}:{port}", err=True)
        click.echo(f"writer DSN is in {path}; reader: {gateway_dsn(info, 'reader').split('@')[-1]}", err=True)
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


@cli.command()
@_fail_cleanly
def run() -> None:
    """Everything in one process: the embedded broker when no bootstrap is set, and the worker."""
    from bastionary.devstack.broker import EmbeddedBroker
    from bastionary.worker.run import run_worker

    settings = _settings()
    load_catalog(settings.catalog)  # fail before anything starts
    if settings.kafka_bootstrap:
        target = resolve_kafka(settings)
        _create_topics(settings, target.bootstrap)
        run_worker(settings, target)
        return
    hold_for_process(settings.data_path, BROKER)

    def announce(embedded: EmbeddedBroker) -> None:
        _create_topics(settings, embedded.bootstrap)
        write_broker_file(settings.data_path, KafkaTarget(embedded.bootstrap, embedded.started_at_ms))

    with EmbeddedBroker(settings.data_path) as embedded:
        announce(embedded)
        embedded.supervise(announce)
        run_worker(settings, KafkaTarget(embedded.bootstrap, embedded.started_at_ms))


@cli.command()
@_fail_cleanly
def worker() -> None:
    """The Faust worker only; start several with one consumer group to scale out."""
    from bastionary.worker.run import run_worker

    settings = _settings()
    target = resolve_kafka(settings)
    _create_topics(settings, target.bootstrap)
    run_worker(settings, target)


@cli.command()
@_fail_cleanly
def rater() -> None:
    """The rater alone (billing intake and rating, no usage ingest), for server deployments.

    Run it in its own consumer group, and set BASTIONARY_RATING_ENABLED=false on the workers."""
    from bastionary.worker.run import run_worker

    settings = _settings()
    settings = settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-rater"})
    target = resolve_kafka(settings)
    _create_topics(settings, target.bootstrap)
    run_worker(settings, target, usage=False)


def _create_topics(settings: Settings, bootstrap: str) -> None:
    from bastionary.kafka import ensure_topics

    topics = Topics(settings.topic_prefix)
    asyncio.run(ensure_topics(bootstrap, topics.all(), settings.usage_partitions, settings.topic_replication))


@cli.command()
@click.argument("source", default="-", type=click.File("rb"))
@click.option(
    "--topic", default="usage.events", show_default=True, help="Topic, before the prefix (e.g. billing.subscriptions)."
)
@click.option("--events-per-record", default=1, show_default=True, help="Pack N events into one batch record.")
@_fail_cleanly
def produce(source, topic: str | None, events_per_record: int) -> None:
    """Publish events from JSON Lines (a file or - for stdin)."""
    from bastionary.kafka import UsageProducer

    settings = _settings()
    bootstrap = resolve_kafka(settings).bootstrap
    topic = Topics(settings.topic_prefix).name(topic)

    async def publish() -> tuple[int, int]:
        records = events = 0
        pending: list = []
        async with UsageProducer(bootstrap) as producer:
            for line_no, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    payload = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise click.ClickException(f"line {line_no}: not JSON: {exc}") from None
                if events_per_record > 1 and isinstance(payload, dict):
                    pending.append(payload)
                    if len(pending) < events_per_record:
                        continue
                    payload, pending = pending, []
                await producer.send(topic, payload)
                records += 1
                events += len(payload) if isinstance(payload, list) else 1
            if pending:
                await producer.send(topic, pending)
                records += 1
                events += len(pending)
            await producer.flush()
        return records, events

    records, events = asyncio.run(publish())
    click.echo(f"published {events} events in {records} records to {topic}")


def _engine_message(exc: Exception) -> str:
    """ClickHouse's own words, without the client's wrapping."""
    text = str(exc)
    text = text[text.find("Code: ") :] if "Code: " in text else text
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@cli.command()
@click.argument("meter")
@click.option("--customer", default=None)
@click.option("--from", "start", default=None, help="Inclusive start, ISO 8601 (UTC if no offset).")
@click.option("--to", "end", default=None, help="Exclusive end, ISO 8601.")
@click.option("--window", type=click.Choice(["MINUTE", "HOUR", "DAY"], case_sensitive=False), default=None)
@click.option("--group-by", multiple=True, help="A dimension of the meter; repeatable.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def usage(meter, customer, start, end, window, group_by, fmt) -> None:
    """Meter totals per customer (and group, and window)."""
    settings = _settings()
    try:
        definition = load_catalog(settings.catalog).meter(meter)
        sql, params = usage_query(definition, customer, _parse_time(start), _parse_time(end), window, list(group_by))
    except (CatalogError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip('"')) from None
    result = _reader_client(settings).query(sql, parameters=params)
    rows = [
        [customer_id, ws.replace(tzinfo=UTC).isoformat(), we.replace(tzinfo=UTC).isoformat(), grp, _number(value)]
        for customer_id, ws, we, grp, value in result.result_rows
    ]
    _emit(["customer_id", "window_start", "window_end", "group", "value"], rows, fmt)


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def sql(query: str, fmt: str) -> None:
    """Run one read-only statement (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN).

    ClickHouse's own parser decides what is a read, by the rule the query gateway applies."""
    from bastionary.storage.readonly_sql import NotReadOnly, checked_statement, tab_separated_text

    settings = _settings()
    client = _reader_client(settings)

    def run(statement: str) -> str:
        return tab_separated_text(client.raw_query(statement))

    try:
        statement = checked_statement(run, query, settings.database)
        result = client.query(statement, settings={"readonly": 2} if not settings.embedded_clickhouse else None)
    except NotReadOnly as refused:
        raise click.ClickException(f"not run: {refused}; `bastionary sql` runs reads only") from None
    except Exception as exc:
        raise click.ClickException(_engine_message(exc)) from None
    rows = [[_jsonable(v) for v in row] for row in result.result_rows]
    _emit(list(result.column_names), rows, fmt)


@cli.command()
@click.option("--customer", default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def invoices(customer: str | None, fmt: str) -> None:
    """List finalized invoices."""
    settings = _settings()
    where, params = ("WHERE customer_id = {c:String}", {"c": customer}) if customer else ("", {})
    rows = (
        _reader_client(settings)
        .query(
            "SELECT invoice_id, customer_id, subscription_id, plan, kind, period_start, period_end, currency,"
            f" subtotal, credits_applied, total, status FROM invoices FINAL {where} ORDER BY period_end, invoice_id",
            parameters=params,
        )
        .result_rows
    )
    columns = [
        "invoice_id",
        "customer_id",
        "subscription_id",
        "plan",
        "kind",
        "period_start",
        "period_end",
        "currency",
        "subtotal",
        "credits_applied",
        "total",
        "status",
    ]
    _emit(columns, [[_jsonable(v) for v in row] for row in rows], fmt)


@cli.group()
def invoice() -> None:
    """One invoice."""


@invoice.command("show")
@click.argument("invoice_id")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None)
def invoice_show(invoice_id: str, html_path: str | None) -> None:
    """Show an invoice as JSON, or render it as printable HTML with --html FILE."""
    from bastionary.rating.render import render_html

    settings = _settings()
    rows = (
        _reader_client(settings)
        .query("SELECT document FROM invoices FINAL WHERE invoice_id = {i:String}", parameters={"i": invoice_id})
        .result_rows
    )
    if not rows:
        raise click.ClickException(f"no invoice {invoice_id}")
    data = orjson.loads(rows[0][0])
    if html_path:
        Path(html_path).write_text(render_html(data))
        click.echo(f"wrote {html_path}")
    else:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2))


@cli.group()
def credits() -> None:
    """Prepaid credits."""


@credits.command("balance")
@click.argument("customer")
@click.option("--at", "at", default=None, help="ISO 8601 time (default now).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def credits_balance(customer: str, at: str | None, fmt: str) -> None:
    """Remaining balance per grant of CUSTOMER."""
    from bastionary.storage.billing import ClickHouseBillingStore

    settings = _settings()
    moment = _parse_time(at) or datetime.now(UTC)
    store = ClickHouseBillingStore(_reader_client(settings))
    grants, drawn = store.grants_as_of(moment)
    rows = []
    for grant in sorted(grants.get(customer, []), key=lambda g: g.order):
        left = max(grant.amount - drawn.get(grant.grant_id, 0), 0)
        status = (
            "voided"
            if grant.voided_at and grant.voided_at <= moment
            else (
                "expired"
                if grant.expires_at and grant.expires_at <= moment
                else ("pending" if grant.effective_at > moment else "active")
            )
        )
        usable = left if status == "active" else 0
        rows.append(
            [
                grant.grant_id,
                grant.currency,
                _number(grant.amount),
                _number(usable),
                grant.priority,
                _jsonable(grant.effective_at),
                _jsonable(grant.expires_at),
                status,
            ]
        )
    _emit(
        ["grant_id", "currency", "granted", "remaining", "priority", "effective_at", "expires_at", "status"], rows, fmt
    )


@cli.command()
@click.option("--events", default=50_000, show_default=True, help="Distinct usage events to generate.")
@click.option("--customers", default=300, show_default=True)
def demo(events: int, customers: int) -> None:
    """Start the embedded stack, meter a realistic workload, print a summary."""
    from bastionary.tools.demo import DemoOptions, run_demo

    settings = _settings()
    configure_logging("WARNING", settings.log_format)  # the summary speaks for itself
    if not run_demo(settings, DemoOptions(events=events, customers=customers)):
        raise SystemExit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run, not a measurement.")
@click.option("--events", type=int, default=None, help="Events per throughput run (default 200,000).")
@click.option("--dedupe-ids", type=int, default=None, help="Distinct ids for the RSS figure (default 1,000,000).")
@click.option("--rating", is_flag=True, help="Rate N subscriptions x 5 metered prices instead (target <= 30 s).")
@click.option("--subscriptions", default=10_000, show_default=True, help="With --rating.")
@click.option(
    "--entitlements",
    "entitlement_checks",
    is_flag=True,
    help="Check latency at 1,000 checks/s (target p99 <= 5 ms) and freshness (target p99 <= 1 s) instead.",
)
def bench(
    as_json: bool,
    quick: bool,
    events: int | None,
    dedupe_ids: int | None,
    rating: bool,
    subscriptions: int,
    entitlement_checks: bool,
) -> None:
    """Measure the pipeline on the embedded stack against its targets."""
    settings = _settings()
    if entitlement_checks:
        from bastionary.tools.bench.entitlements import render_entitlements, run_entitlements_bench

        configure_logging("WARNING", settings.log_format)
        click.echo(render_entitlements(run_entitlements_bench(quick=quick), as_json))
        return
    if rating:
        from bastionary.tools.bench.rating import run_rating_bench

        configure_logging("WARNING", settings.log_format)
        result = run_rating_bench(subscriptions)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            for key, value in result.items():
                click.echo(f"{key:>28}: {value}")
        return
    from bastionary.tools.bench import BenchOptions, render, run_bench

    options = BenchOptions(quick=quick)
    if events:
        options.events = events
    if dedupe_ids:
        options.dedupe_ids = dedupe_ids
    click.echo(render(run_bench(options), as_json))


cli.add_command(dunning)
cli.add_command(clock)
cli.add_command(entitlements)


def main() -> None:  # pragma: no cover - console entry point
    cli(prog_name="bastionary")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
