"""`invoices`, `invoice show`, `credit-notes`, `credit-note show`, `credits balance` and
`credits ledger`: what the rater decided, read back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click
import orjson

from bastionary.cli.common import emit, output_format, parse_time, reader_client, settings_or_exit
from bastionary.storage.reports import (
    BALANCE_COLUMNS,
    GRANT_COLUMNS,
    INVOICE_COLUMNS,
    LEDGER_COLUMNS,
    InvoiceReports,
    balance_rows,
    grant_row,
    jsonable,
)


@click.command()
@click.option("--customer", default=None)
@output_format
def invoices(customer: str | None, fmt: str) -> None:
    """List finalized invoices."""
    rows = InvoiceReports(reader_client(settings_or_exit())).invoices(customer)
    emit(INVOICE_COLUMNS, [[jsonable(v) for v in row] for row in rows], fmt)


@click.group()
def invoice() -> None:
    """One invoice."""


@invoice.command("show")
@click.argument("invoice_id")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None)
def invoice_show(invoice_id: str, html_path: str | None) -> None:
    """Show an invoice as JSON, or render it as printable HTML with --html FILE."""
    from bastionary.rating.render import render_html

    document = InvoiceReports(reader_client(settings_or_exit())).document(invoice_id)
    if document is None:
        raise click.ClickException(f"no invoice {invoice_id}")
    if html_path:
        Path(html_path).write_text(render_html(document))
        click.echo(f"wrote {html_path}")
    else:
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2))


@click.command("credit-notes")
@click.option("--customer", default=None)
@output_format
def credit_notes(customer: str | None, fmt: str) -> None:
    """List decided credit notes (issued and rejected)."""
    from bastionary.storage.credit_notes import LIST_COLUMNS, ClickHouseCreditNoteStore

    rows = ClickHouseCreditNoteStore(reader_client(settings_or_exit())).listing(customer)
    emit(LIST_COLUMNS, [[jsonable(v) for v in row] for row in rows], fmt)


@click.group("credit-note")
def credit_note() -> None:
    """One credit note."""


@credit_note.command("show")
@click.argument("credit_note_id")
def credit_note_show(credit_note_id: str) -> None:
    """Show a credit note's decision as JSON, as published on billing.invoices."""
    from bastionary.storage.credit_notes import ClickHouseCreditNoteStore

    document = ClickHouseCreditNoteStore(reader_client(settings_or_exit())).document(credit_note_id)
    if document is None:
        raise click.ClickException(f"no credit note {credit_note_id}")
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2))


@click.group()
def credits() -> None:
    """Prepaid credits."""


@credits.command("balance")
@click.argument("customer")
@click.option("--at", "at", default=None, help="ISO 8601 time (default now).")
@click.option("--totals", is_flag=True, help="Only the totals per currency, by funding.")
@output_format
def credits_balance(customer: str, at: str | None, totals: bool, fmt: str) -> None:
    """Remaining balance of CUSTOMER per grant, in the order invoices draw on them
    (promotional, then paid, then carried credit), and in total per currency by funding.
    With --format json: the grants, or with --totals the totals."""
    from bastionary.credits.balances import balances
    from bastionary.storage.billing import ClickHouseBillingStore

    settings = settings_or_exit()
    moment = parse_time(at) or datetime.now(UTC)
    grants, drawn = ClickHouseBillingStore(reader_client(settings)).grants_as_of(moment)
    lines = balances(grants.get(customer, []), drawn, moment)
    summary = [list(row.values()) for row in balance_rows(lines)]
    if totals:
        emit(BALANCE_COLUMNS, summary, fmt)
        return
    emit(GRANT_COLUMNS, [list(grant_row(line).values()) for line in lines], fmt)
    if fmt == "table":
        emit(BALANCE_COLUMNS, summary, fmt)


@credits.command("ledger")
@click.argument("customer")
@output_format
def credits_ledger(customer: str, fmt: str) -> None:
    """Every credit movement of CUSTOMER, oldest first: grants, purchases, voids, and what
    each stored invoice drew (applied), let lapse (expired) or carried forward."""
    rows = InvoiceReports(reader_client(settings_or_exit())).ledger(customer)
    emit(LEDGER_COLUMNS, [[jsonable(v) for v in row] for row in rows], fmt)
