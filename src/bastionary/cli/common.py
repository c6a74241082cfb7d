"""What the CLI commands share: settings, the read-only ClickHouse client, errors and output."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click
import orjson

from bastionary.apikeys import KeyFileError
from bastionary.catalog import CatalogError
from bastionary.eventloop import EventLoopUnavailable
from bastionary.kafka import TopicsRefused
from bastionary.locks import DataDirInUse
from bastionary.logs import configure_logging
from bastionary.runtime import NoBroker, connect_clickhouse, exit_past_engine_teardown
from bastionary.settings import ConfigError, Settings, load_settings
from bastionary.storage.client import Client, engine_in_process
from bastionary.storage.migrations import MigrationError

P = ParamSpec("P")
R = TypeVar("R")

output_format = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def fail_cleanly(fn: Callable[P, R]) -> Callable[P, R]:
    """Known start-up problems become one readable line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (
            CatalogError,
            NoBroker,
            DataDirInUse,
            KeyFileError,
            EventLoopUnavailable,
            TopicsRefused,
            MigrationError,  # a database set up by another version: the operator's to settle
        ) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def ends_past_engine_teardown(fn: Callable[P, None]) -> Callable[P, None]:
    """For the long-running commands: once the command is done (returned, or raised
    ``SystemExit`` as Faust's worker does on SIGTERM), a process that opened chdb ends without
    chdb's exit handlers (:func:`bastionary.runtime.exit_past_engine_teardown` says why). Any
    other exception is left to click, as before."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except SystemExit as exited:
            if not engine_in_process():
                raise
            exit_past_engine_teardown(exited.code)
        if engine_in_process():
            exit_past_engine_teardown(0)

    return wrapper


DEBUG_VARIABLE = "BASTIONARY_DEBUG"  # set: an unexpected error shows its traceback


class Cli(click.Group):
    """The command group: an error no command turned into a message becomes one line saying
    what was wrong and what to do (exit 1), not a traceback; ``BASTIONARY_DEBUG=1`` shows it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # The reader of our output left (`| head`): nothing went wrong here, and click ends
            # the command quietly on it, as other tools do.
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_VARIABLE):
                raise
            raise click.ClickException(explain(exc)) from None


def explain(exc: Exception) -> str:
    """One line for an error a command let through: the known ones with what to do."""
    text = str(exc)
    name = type(exc).__name__
    if "UNKNOWN_TABLE" in text or "UNKNOWN_DATABASE" in text:
        return (
            "Bastionary's tables do not exist in this ClickHouse yet: start `bastionary run` (or "
            "`bastionary worker`) once to create them, or point BASTIONARY_CLICKHOUSE_DSN at the right one"
        )
    if "Code: " in text:
        return f"ClickHouse refused the query: {engine_message(exc)}"
    if name.startswith("Kafka") or "bootstrap" in text.lower():
        return f"cannot reach Kafka ({text.splitlines()[0]}): check BASTIONARY_KAFKA_BOOTSTRAP, or unset it for the embedded broker"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}: another process holds the port; stop it or choose another port (BASTIONARY_WEB_PORT)"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot use {exc.filename}: {exc.strerror or text}"
    first = text.splitlines()[0] if text.strip() else ""
    return f"{name}: {first} (a bug of ours, please report it; {DEBUG_VARIABLE}=1 shows the traceback)"


def require_customer(client: Client, customer: str) -> None:
    """An unknown customer id is an error, not an empty answer (a typo looks like no data)."""
    from bastionary.storage.reports import InvoiceReports

    if not InvoiceReports(client).knows(customer):
        raise click.ClickException(
            f"unknown customer {customer!r}: no subscription, customer record, credit or usage has this id"
        )


def reader_client(settings: Settings) -> Client:
    try:
        return connect_clickhouse(settings, role="reader").client
    except Exception as exc:  # a locked chdb dir with no gateway, an unreachable server
        raise click.ClickException(f"cannot open ClickHouse: {exc}") from None


def engine_message(exc: Exception) -> str:
    """ClickHouse's own words, without the client's wrapping."""
    text = str(exc)
    text = text[text.find("Code: ") :] if "Code: " in text else text
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def parse_time(value: str | None, option: str | None = None) -> datetime | None:
    """An ISO 8601 option value; a time without an offset is UTC."""
    return None if value is None else required_time(value, option)


def required_time(value: str, option: str | None = None) -> datetime:
    """An ISO 8601 time, the way every command reads one: UTC when it has no offset. A value
    refused names ``option``, when given."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value}", param_hint=option) from None
    if not moment.tzinfo:
        return moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)  # every command compares and stores the time in UTC
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first date Python holds in UTC
        raise click.BadParameter(f"{value} is outside the years 1 to 9999 in UTC", param_hint=option) from None
    return moment


def emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        records = [dict(zip(columns, row, strict=False)) for row in rows]
        click.echo(orjson.dumps(records, default=str, option=orjson.OPT_INDENT_2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Cells and headers as plain text: read as rich markup, a customer id `[acme]` printed
    # empty and `a[/]b` failed the command (MarkupError).
    table = Table()
    for column in columns:
        table.add_column(Text(str(column)))
    for row in rows:
        table.add_row(*(Text(cell(v)) for v in row))
    # Wide enough never to cut a cell: ids are printed whole, for the commands that take them.
    Console(width=10_000).print(table)


def cell(value: Any) -> str:
    """A table cell: nothing for None, ``key=value`` pairs for a mapping (a usage group)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    return str(value)
