"""``bastionary``: run the pipeline, publish usage, and query it.

One module per family of commands; this one only assembles the group (the console entry point
is ``bastionary.cli.main:cli``)."""

from __future__ import annotations

import click

from bastionary.cli.apikeys import api_key
from bastionary.cli.billing import credit_note, credit_notes, credits, invoice, invoices
from bastionary.cli.common import Cli
from bastionary.cli.config import config_cmd
from bastionary.cli.dunning import clock, dunning
from bastionary.cli.entitlements import entitlements
from bastionary.cli.processes import broker, rater, run, serve_clickhouse, worker
from bastionary.cli.tools import bench, demo
from bastionary.cli.usage import produce, sql, usage


@click.group(cls=Cli)
@click.version_option(package_name="bastionary")
def cli() -> None:
    """Self-hosted usage billing on Kafka, Faust and ClickHouse."""


for command in (
    config_cmd,
    broker,
    serve_clickhouse,
    run,
    worker,
    rater,
    produce,
    usage,
    sql,
    invoices,
    invoice,
    credit_notes,
    credit_note,
    credits,
    demo,
    bench,
    dunning,
    clock,
    entitlements,
    api_key,
):
    cli.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    cli(prog_name="bastionary")
