"""What the CLI commands share: settings, the read-only ClickHouse client, output."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import orjson

from bastionary.logs import configure_logging
from bastionary.runtime import connect_clickhouse
from bastionary.settings import ConfigError, Settings, load_settings


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def reader_client(settings: Settings):
    try:
        return connect_clickhouse(settings, role="reader").client
    except Exception as exc:  # a locked chdb dir with no gateway, an unreachable server
        raise click.ClickException(f"cannot open ClickHouse: {exc}") from None


def emit(columns: list[str], rows: list[list], fmt: str) -> None:
    if fmt == "json":
        click.echo(
            orjson.dumps([dict(zip(columns, r, strict=False)) for r in rows], default=str, option=orjson.OPT_INDENT_2)
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(width=200).print(table)


def number(value):
    """Decimal to a JSON-safe exact string with no trailing zeros."""
    if value is None:
        return None
    return format(value.normalize(), "f") if hasattr(value, "normalize") else str(value)


def jsonable(value):
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if hasattr(value, "normalize") and hasattr(value, "as_tuple"):
        return number(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
