"""What the CLI commands share: settings, the read-only ClickHouse client, errors and output."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click
import orjson

from bastionary.apikeys import KeyFileError
from bastionary.catalog import CatalogError
from bastionary.locks import DataDirInUse
from bastionary.logs import configure_logging
from bastionary.runtime import NoBroker, connect_clickhouse
from bastionary.settings import ConfigError, Settings, load_settings
from bastionary.storage.client import Client

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
        except (CatalogError, NoBroker, DataDirInUse, KeyFileError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


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


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 option value; a time without an offset is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        records = [dict(zip(columns, row, strict=False)) for row in rows]
        click.echo(orjson.dumps(records, default=str, option=orjson.OPT_INDENT_2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(width=200).print(table)
