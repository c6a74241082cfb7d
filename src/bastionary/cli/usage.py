"""Usage in and out: `produce` publishes JSON Lines, `usage` reads meter totals, `sql` runs reads."""

from __future__ import annotations

import asyncio
import logging
from typing import IO, Any

import click
import orjson

from bastionary.catalog import CatalogError, load_catalog
from bastionary.cli.common import (
    emit,
    engine_message,
    fail_cleanly,
    output_format,
    parse_time,
    reader_client,
    require_customer,
    settings_or_exit,
)
from bastionary.runtime import resolve_kafka
from bastionary.storage.queries import WINDOWS, usage_query
from bastionary.storage.reports import USAGE_COLUMNS, jsonable, meter_usage
from bastionary.topics import OWNED, Topics

# Events `produce` holds for their customers' batches at most (10,000 events of about 1 kB).
HELD_EVENTS_LIMIT = 10_000


@click.command()
@click.argument("source", default="-", type=click.File("rb"))
@click.option(
    "--topic", default="usage.events", show_default=True, help="Topic, before the prefix (e.g. billing.subscriptions)."
)
@click.option(
    "--events-per-record",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Pack N events into one batch record.",
)
@click.option("--create", is_flag=True, help="Allow a topic Bastionary does not own (the broker may create it).")
@fail_cleanly
def produce(source: IO[bytes], topic: str, events_per_record: int, create: bool) -> None:
    """Publish events from JSON Lines (a file or - for stdin)."""
    from bastionary.kafka import UsageProducer, subject_key

    if topic not in OWNED and not create:
        raise click.BadParameter(
            f"{topic!r} is not a Bastionary topic ({', '.join(OWNED)}); pass --create to publish to it anyway",
            param_hint="--topic",
        )
    settings = settings_or_exit()
    # aiokafka logs each failed connection attempt; the one-line error below says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    bootstrap = resolve_kafka(settings).bootstrap
    topic = Topics(settings.topic_prefix).name(topic)

    async def publish() -> tuple[int, int]:
        records = events = 0
        # A batch is keyed by its first event's subject, so each holds one customer's events:
        # another customer's event in it would land on that customer's partition, where dedupe
        # never meets the event's copies sent under its own key (a re-run batched differently).
        pending: dict[bytes | None, list[Any]] = {}
        held = 0  # events in pending
        async with UsageProducer(bootstrap) as producer:
            for line_no, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    payload = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise click.ClickException(f"line {line_no}: not JSON: {exc}") from None
                if events_per_record > 1 and isinstance(payload, dict):
                    key = subject_key(payload)
                    batch = pending.setdefault(key, [])
                    batch.append(payload)
                    held += 1
                    if held >= HELD_EVENTS_LIMIT:
                        # Every customer's batch goes, whole or not: memory stays bounded, and a
                        # customer with few events in a long stream is not held to its end.
                        due, pending, held = list(pending.values()), {}, 0
                    elif len(batch) == events_per_record:
                        due, held = [pending.pop(key)], held - events_per_record
                    else:
                        continue
                else:
                    due = [payload]
                for payload in due:
                    await producer.send(topic, payload)
                    records += 1
                    events += len(payload) if isinstance(payload, list) else 1
            for batch in pending.values():
                await producer.send(topic, batch)
                records += 1
                events += len(batch)
            await producer.flush()
        return records, events

    records, events = asyncio.run(publish())
    click.echo(f"published {events} events in {records} records to {topic}")


@click.command()
@click.argument("meter")
@click.option("--customer", default=None)
@click.option("--from", "start", default=None, help="Inclusive start, ISO 8601 (UTC if no offset).")
@click.option("--to", "end", default=None, help="Exclusive end, ISO 8601.")
@click.option("--window", type=click.Choice(list(WINDOWS), case_sensitive=False), default=None)
@click.option("--group-by", multiple=True, help="A dimension of the meter; repeatable.")
@click.option("--filter", "filters", multiple=True, help="DIMENSION=VALUE: only those rows; repeatable.")
@output_format
def usage(
    meter: str,
    customer: str | None,
    start: str | None,
    end: str | None,
    window: str | None,
    group_by: tuple[str, ...],
    filters: tuple[str, ...],
    fmt: str,
) -> None:
    """Meter totals per customer (and group, and window). A window the range cuts is shown
    as the part the range covers."""
    settings = settings_or_exit()
    since, until = parse_time(start, "--from"), parse_time(end, "--to")
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(f"--from {since.isoformat()} is not before --to {until.isoformat()}")
    try:
        definition = load_catalog(settings.catalog).meter(meter)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyError as exc:
        raise click.BadParameter(str(exc).strip('"'), param_hint="METER") from None
    only = dict(_filter(item) for item in filters)
    try:
        # A dimension the meter lacks, or a range outside usage times, is a bad option: told
        # as one (exit 2) before ClickHouse is opened, not after, as a failed query.
        usage_query(definition, customer, since, until, window, list(group_by), only)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    client = reader_client(settings)
    if customer is not None:
        require_customer(client, customer)
    rows = meter_usage(client, definition, customer, since, until, window, list(group_by), only)
    emit(USAGE_COLUMNS, [[row[column] for column in USAGE_COLUMNS] for row in rows], fmt)


def _filter(item: str) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    if not equals or not name:
        raise click.BadParameter(f"expected DIMENSION=VALUE, got {item!r}", param_hint="--filter")
    return name, value


@click.command()
@click.argument("query")
@output_format
def sql(query: str, fmt: str) -> None:
    """Run one read-only statement (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN).

    ClickHouse's own parser decides what is a read, by the rule the query gateway applies."""
    from bastionary.storage.readonly_sql import NotReadOnly, checked_statement, tab_separated_text

    settings = settings_or_exit()
    client = reader_client(settings)

    def run(statement: str) -> str:
        return tab_separated_text(client.raw_query(statement))

    try:
        statement = checked_statement(run, query, settings.database)
        result = client.query(statement, settings={"readonly": 2} if not settings.embedded_clickhouse else None)
    except NotReadOnly as refused:
        raise click.ClickException(f"not run: {refused}; `bastionary sql` runs reads only") from None
    except Exception as exc:
        raise click.ClickException(engine_message(exc)) from None
    rows = [[jsonable(v) for v in row] for row in result.result_rows]
    emit(list(result.column_names), rows, fmt)
