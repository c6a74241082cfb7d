"""`bastionary config`: the effective configuration, and whether the broker and ClickHouse answer."""

from __future__ import annotations

import asyncio
import json

import click

from bastionary.apikeys import KeyFileError, KeyRing
from bastionary.catalog import CatalogError, load_catalog
from bastionary.cli.common import engine_message, settings_or_exit
from bastionary.runtime import NoBroker, connect_clickhouse, resolve_kafka
from bastionary.settings import Settings, url_without_credentials


@click.command("config")
@click.option("--validate", is_flag=True, help="Also check that the broker and ClickHouse answer; exit 1 if not.")
def config_cmd(validate: bool) -> None:
    """Print the effective configuration (secrets masked), after checking settings and catalog."""
    settings = settings_or_exit()
    try:
        catalog = load_catalog(settings.catalog)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        KeyRing(settings.api_key_list, settings.api_key_file)  # as the worker reads it at start
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    out = settings.redacted() | {"meters": [m.key for m in catalog.meters]}
    if settings.webhook_url:
        # Receivers often take their credentials in the URL (``user:password@``, ``?token=``) under
        # names of their own, and this output ends up in tickets and chat: every query value goes.
        out["webhook_url"] = url_without_credentials(settings.webhook_url, mask_every_query_value=True)
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
        return False, f"ClickHouse does not answer: {engine_message(exc)}"
    return True, f"ClickHouse {version} answers ({handle.dsn_description})"
