"""`invoices`, `invoice show`, `credit-notes`, `credit-note show`, `credits balance` and
`credits ledger`: what the rater decided, read back."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson

from bastionary.cli.common import emit, output_format, parse_time, reader_client, require_customer, settings_or_exit
from bastionary.settings import Settings
from bastionary.storage.reports import (
    BALANCE_COLUMNS,
    GRANT_COLUMNS,
    INVOICE_COLUMNS,
    LEDGER_COLUMNS,
    InvoiceReports,
    balance_rows,
    grant_row,
)


@click.command()
@click.option("--customer", default=None)
@output_format
def invoices(customer: str | None, fmt: str) -> None:
    """List finalized invoices; with --format json, each invoice's whole document (lines,
    due date, tax, credits) as published on billing.invoices."""
    client = reader_client(settings_or_exit())
    if customer is not None:
        require_customer(client, customer)
    reports = InvoiceReports(client)
    if fmt == "json":
        click.echo(orjson.dumps(reports.documents(customer), option=orjson.OPT_INDENT_2))
        return
    emit(INVOICE_COLUMNS, [list(row.values()) for row in reports.summaries(customer)], fmt)


@click.group()
def invoice() -> None:
    """One invoice."""


PAGE = click.Path(dir_okay=False, writable=True)


def _hide_zero_lines(settings: Settings) -> bool:
    from bastionary.catalog import CatalogError, load_catalog

    try:
        return load_catalog(settings.catalog).invoicing.hide_zero_lines
    except CatalogError:  # the page is still worth printing: the default
        return True


def _write(path: str, content: str | bytes) -> None:
    data = content if isinstance(content, bytes) else content.encode()
    target = Path(os.path.realpath(path))  # through a symlink, as writing to it in place did
    try:
        if target.exists() and not target.is_file():  # /dev/stdout, a FIFO: nothing to swap
            target.write_bytes(data)
        else:
            _replace_whole(target, data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}")


def _replace_whole(target: Path, data: bytes) -> None:
    """``target`` holds ``data`` whole, or is left as it was: written in place, a write that
    failed half way (a full disk) left a cut PDF, and the good copy it overwrote was lost."""
    mode = target.stat().st_mode & 0o7777 if target.exists() else None
    part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with part.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            part.chmod(mode)
        part.replace(target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@invoice.command("show")
@click.argument("invoice_id")
@click.option("--html", "html_path", type=PAGE, default=None, help="Write a printable HTML page.")
@click.option("--pdf", "pdf_path", type=PAGE, default=None, help="Write a PDF.")
def invoice_show(invoice_id: str, html_path: str | None, pdf_path: str | None) -> None:
    """Show an invoice as JSON, or render it with --html FILE and/or --pdf FILE."""
    from bastionary.rating.render import render_html, render_invoice_pdf

    settings = settings_or_exit()
    document = InvoiceReports(reader_client(settings)).document(invoice_id)
    if document is None:
        raise click.ClickException(f"no invoice {invoice_id}")
    hide = _hide_zero_lines(settings)
    if html_path:
        _write(html_path, render_html(document, hide))
    if pdf_path:
        _write(pdf_path, render_invoice_pdf(document, hide))
    if not html_path and not pdf_path:
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2))


@click.command("credit-notes")
@click.option("--customer", default=None)
@output_format
def credit_notes(customer: str | None, fmt: str) -> None:
    """List decided credit notes (issued and rejected)."""
    from bastionary.storage.credit_notes import LIST_COLUMNS, ClickHouseCreditNoteStore

    client = reader_client(settings_or_exit())
    if customer is not None:
        require_customer(client, customer)
    rows = ClickHouseCreditNoteStore(client).summaries(customer)
    emit(LIST_COLUMNS, [list(row.values()) for row in rows], fmt)


@click.group("credit-note")
def credit_note() -> None:
    """One credit note."""


@credit_note.command("show")
@click.argument("credit_note_id")
@click.option("--html", "html_path", type=PAGE, default=None, help="Write a printable HTML page (issued notes).")
@click.option("--pdf", "pdf_path", type=PAGE, default=None, help="Write a PDF (issued notes).")
def credit_note_show(credit_note_id: str, html_path: str | None, pdf_path: str | None) -> None:
    """Show a credit note's decision as JSON, as published on billing.invoices, or render an
    issued one with --html FILE and/or --pdf FILE."""
    from bastionary.rating.render import credit_note_view, render_pdf_view, render_view
    from bastionary.storage.credit_notes import ClickHouseCreditNoteStore

    client = reader_client(settings_or_exit())
    document = ClickHouseCreditNoteStore(client).document(credit_note_id)
    if document is None:
        raise click.ClickException(f"no credit note {credit_note_id}")
    if not html_path and not pdf_path:
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        return
    if document["status"] != "issued":
        raise click.ClickException(f"credit note {credit_note_id} was rejected: {document.get('rejection', '')}")
    view = credit_note_view(document, InvoiceReports(client).document(document["invoice_id"]))
    if html_path:
        _write(html_path, render_view(view))
    if pdf_path:
        _write(pdf_path, render_pdf_view(view))


@click.group()
def credits() -> None:
    """Prepaid credits."""


# Invoices' issue times are DateTime64, 1900 to 2299: none is issued outside, so the invoices
# issued by a moment past a bound are those issued by the bound (ClickHouse could not read the
# moment itself: one before the year 1000 does not parse).
FIRST_ISSUE_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LAST_ISSUE_TIME = datetime(2299, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)


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
    moment = parse_time(at, "--at") or datetime.now(UTC)
    client = reader_client(settings)
    require_customer(client, customer)
    issued_by = min(max(moment, FIRST_ISSUE_TIME), LAST_ISSUE_TIME)
    grants, drawn = ClickHouseBillingStore(client).grants_as_of(issued_by)
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
    client = reader_client(settings_or_exit())
    require_customer(client, customer)
    rows = InvoiceReports(client).ledger_rows(customer)
    emit(LEDGER_COLUMNS, [list(row.values()) for row in rows], fmt)
