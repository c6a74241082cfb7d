"""The read API: meter usage, invoices, credits, subscriptions and the upcoming invoice.

Every read here comes from ClickHouse, so any worker answers it locally; the queries are
the CLI's own (:mod:`bastionary.storage.reports`), so the API and the CLI always agree.
A customer-limited key reads its own customer only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
from aiohttp import web

from bastionary.apikeys import CUSTOMER_ID_RULE, ApiKey, valid_customer_id
from bastionary.credits.balances import balances
from bastionary.rating.render import render_html, render_invoice_pdf
from bastionary.storage.client import Client
from bastionary.storage.credit_notes import ClickHouseCreditNoteStore
from bastionary.storage.queries import FIRST_BOUND, LAST_BOUND, WINDOWS
from bastionary.storage.reports import (
    InvoiceReports,
    balance_rows,
    grant_row,
    jsonable,
    meter_usage,
)
from bastionary.worker.api.auth import Guard, json_error
from bastionary.worker.services.api import ApiBackend

# The most rows a usage query answers: a minute window over a year for every customer would
# otherwise be built in the worker's memory whole (a customer-limited key can ask it too).
MAX_USAGE_ROWS = 100_000
# The most invoices or credit notes a list answers, for the same reason: every customer's, in
# a large deployment, was answered in one body (150,000 invoices: 47 MB, built whole).
MAX_LIST_ROWS = 100_000


class BadQuery(ValueError):
    pass


def query_time(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise BadQuery(f"{name}: not an ISO 8601 time: {text[:64]!r}") from None
    except OverflowError:  # 9999-12-31T23:59-14:00 is past the last date Python holds in UTC
        moment = None
    # The range of usage and billing times: ClickHouse refuses a year before 1000 (a 500), and
    # clamps what lies between.
    if moment is None or not FIRST_BOUND <= moment <= LAST_BOUND:
        raise BadQuery(f"{name}: {text[:64]!r} is outside 1970-01-01 .. 2106-01-01 UTC")
    return moment


def usage_filters(request: web.Request) -> dict[str, str]:
    """``filter[DIMENSION]=VALUE``, repeatable for different dimensions."""
    found: dict[str, str] = {}
    for name, value in request.query.items():
        if name.startswith("filter[") and name.endswith("]"):
            dimension = name[7:-1]
            if dimension in found:
                raise BadQuery(f"filter[{dimension}] is given twice")
            found[dimension] = value
        elif name.startswith("filter"):
            raise BadQuery(f"expected filter[DIMENSION]=VALUE, got {name[:64]!r}")
    return found


def listed_count(reader: Client, table: str, customer: str | None, where: str = "1") -> int:
    """How many rows of ``table`` a list for ``customer`` (empty: every customer) would read.
    Counted first, so a list too long is refused before any of it is fetched."""
    sql, params = f"SELECT count() FROM {table} FINAL WHERE {where}", {}
    if customer:  # as the lists themselves: an empty customer is every customer
        sql, params = sql + " AND customer_id = {c:String}", {"c": customer}
    return int(reader.query(sql, parameters=params).result_rows[0][0])


def invalid_customer(customer: str | None) -> web.Response | None:
    """400 for a ``customer=`` that names no customer. An empty one listed every customer's
    invoices and credit notes: a portal on an admin key, its session's id unset, showed them all."""
    if customer is None or valid_customer_id(customer):
        return None
    return json_error(400, "invalid_customer_id", CUSTOMER_ID_RULE)


def list_too_long(what: str) -> web.Response:
    return json_error(
        400, "invalid_query", f"more than {MAX_LIST_ROWS:,} {what}: list one customer's at a time (customer=)"
    )


def install(app: faust.App, guard: Guard, backend: ApiBackend) -> None:
    @app.page("/v1/meters/{meter}/query")
    class MeterQueryView(faust.web.View):
        async def get(self, request: Any, meter: str) -> Any:
            allowed = guard.customer_query(request, "read")
            if isinstance(allowed, web.Response):
                return allowed
            _, customer = allowed
            if refused := invalid_customer(customer):
                return refused
            try:
                definition = backend.catalog.meter(meter)
            except KeyError:
                return json_error(404, "unknown_meter", f"no meter {meter[:64]!r} in the catalog")
            window = request.query.get("window")
            try:
                if window is not None and window.upper() not in WINDOWS:
                    raise BadQuery(f"window: one of {', '.join(w.lower() for w in WINDOWS)}")
                start, end = query_time(request, "from"), query_time(request, "to")
                group_by = request.query.getall("group_by", [])
                rows = await asyncio.to_thread(
                    meter_usage,
                    backend.reader,
                    definition,
                    customer,
                    start,
                    end,
                    window,
                    group_by,
                    usage_filters(request),
                    MAX_USAGE_ROWS + 1,
                )
            except (BadQuery, ValueError) as exc:
                return json_error(400, "invalid_query", str(exc))
            if len(rows) > MAX_USAGE_ROWS:
                return json_error(
                    400,
                    "invalid_query",
                    f"more than {MAX_USAGE_ROWS:,} rows: narrow from/to, or ask a coarser window or fewer group_by",
                )
            return self.json(
                {
                    "meter": meter,
                    "customer": customer,
                    "from": jsonable(start),
                    "to": jsonable(end),
                    "window": window.lower() if window else None,
                    "data": rows,
                }
            )

    @app.page("/v1/invoices")
    class InvoicesView(faust.web.View):
        async def get(self, request: Any) -> Any:
            allowed = guard.customer_query(request, "read")
            if isinstance(allowed, web.Response):
                return allowed
            _, customer = allowed
            if refused := invalid_customer(customer):
                return refused
            count = await asyncio.to_thread(listed_count, backend.reader, "invoices", customer, "status != 'empty'")
            if count > MAX_LIST_ROWS:
                return list_too_long("invoices")
            invoices = await asyncio.to_thread(InvoiceReports(backend.reader).summaries, customer)
            return self.json({"invoices": invoices})

    async def invoice_document(request: web.Request, invoice_id: str) -> dict[str, Any] | web.Response:
        key = guard.key(request, "read")
        if not isinstance(key, ApiKey):
            return key
        document = await asyncio.to_thread(InvoiceReports(backend.reader).document, invoice_id)
        # A customer-limited key is told "no such invoice" for another customer's: the ids of
        # other customers' invoices are not its business either.
        if document is None or not key.may_see(document.get("customer_id")):
            return json_error(404, "unknown_invoice", f"no invoice {invoice_id[:64]!r}")
        return document

    @app.page("/v1/invoices/{invoice_id}")
    class InvoiceView(faust.web.View):
        async def get(self, request: Any, invoice_id: str) -> Any:
            document = await invoice_document(request, invoice_id)
            return document if isinstance(document, web.Response) else self.json(document)

    @app.page("/v1/invoices/{invoice_id}/html")
    class InvoiceHtmlView(faust.web.View):
        async def get(self, request: Any, invoice_id: str) -> Any:
            document = await invoice_document(request, invoice_id)
            if isinstance(document, web.Response):
                return document
            hide = backend.catalog.invoicing.hide_zero_lines
            return web.Response(text=render_html(document, hide), content_type="text/html")

    @app.page("/v1/invoices/{invoice_id}/pdf")
    class InvoicePdfView(faust.web.View):
        async def get(self, request: Any, invoice_id: str) -> Any:
            document = await invoice_document(request, invoice_id)
            if isinstance(document, web.Response):
                return document
            hide = backend.catalog.invoicing.hide_zero_lines
            body = await asyncio.to_thread(render_invoice_pdf, document, hide)
            return web.Response(body=body, content_type="application/pdf")

    @app.page("/v1/credit-notes")
    class CreditNotesView(faust.web.View):
        async def get(self, request: Any) -> Any:
            allowed = guard.customer_query(request, "read")
            if isinstance(allowed, web.Response):
                return allowed
            _, customer = allowed
            if refused := invalid_customer(customer):
                return refused
            # Requested notes are counted too (the list leaves them out): a few more, never fewer.
            count = await asyncio.to_thread(listed_count, backend.reader, "credit_notes", customer)
            if count > MAX_LIST_ROWS:
                return list_too_long("credit notes")
            notes = await asyncio.to_thread(ClickHouseCreditNoteStore(backend.reader).summaries, customer)
            return self.json({"credit_notes": notes})

    @app.page("/v1/credit-notes/{credit_note_id}")
    class CreditNoteView(faust.web.View):
        async def get(self, request: Any, credit_note_id: str) -> Any:
            key = guard.key(request, "read")
            if not isinstance(key, ApiKey):
                return key
            document = await asyncio.to_thread(ClickHouseCreditNoteStore(backend.reader).document, credit_note_id)
            if document is None or not key.may_see(document.get("customer_id")):
                return json_error(404, "unknown_credit_note", f"no credit note {credit_note_id[:64]!r}")
            return self.json(document)

    def customer_read(path: str, answer: Callable[[ApiBackend, web.Request, str], dict[str, Any]]) -> None:
        """GET ``path`` for one customer: the key checked, then ``answer`` (it reads ClickHouse) in a thread."""

        @app.page(path, name=f"read:{path}")
        class CustomerRead(faust.web.View):
            async def get(self, request: Any, customer_id: str) -> Any:
                key = guard.customer_path(request, "read", customer_id)
                if not isinstance(key, ApiKey):
                    return key
                try:
                    body = await asyncio.to_thread(answer, backend, request, customer_id)
                except BadQuery as exc:
                    return json_error(400, "invalid_query", str(exc))
                return self.json({"customer_id": customer_id, **body})

    @app.page("/v1/customers/{customer_id}")
    class CustomerView(faust.web.View):
        async def get(self, request: Any, customer_id: str) -> Any:
            key = guard.customer_path(request, "read", customer_id)
            if not isinstance(key, ApiKey):
                return key
            record = await asyncio.to_thread(InvoiceReports(backend.reader).customer, customer_id)
            if record is None:
                return json_error(404, "unknown_customer", f"no customer record for {customer_id!r}")
            return self.json(record)

    customer_read("/v1/customers/{customer_id}/credits", credit_balance)
    customer_read("/v1/customers/{customer_id}/credits/ledger", credit_ledger)
    customer_read("/v1/customers/{customer_id}/subscriptions", subscriptions)
    customer_read("/v1/customers/{customer_id}/upcoming-invoice", upcoming_invoice)


def credit_balance(backend: ApiBackend, request: web.Request, customer_id: str) -> dict[str, Any]:
    moment = query_time(request, "at") or datetime.now(UTC)
    grants, drawn = backend.billing_reads().grants_as_of(moment, customer_id)
    lines = balances(grants.get(customer_id, []), drawn, moment)
    return {"at": jsonable(moment), "balances": balance_rows(lines), "grants": [grant_row(line) for line in lines]}


def credit_ledger(backend: ApiBackend, request: web.Request, customer_id: str) -> dict[str, Any]:
    return {"movements": InvoiceReports(backend.reader).ledger_rows(customer_id)}


def subscriptions(backend: ApiBackend, request: web.Request, customer_id: str) -> dict[str, Any]:
    subs = backend.billing_reads().subscriptions(backend.plans, customer_id)
    return {
        "subscriptions": [
            {
                "subscription_id": sub.subscription_id,
                "billing_anchor": jsonable(sub.anchor),
                "canceled_at": jsonable(sub.canceled_at),
                "plans": [
                    {"plan": s.plan.key, "from": jsonable(s.start), "until": jsonable(s.end)} for s in sub.segments
                ],
            }
            for sub in subs
        ]
    }


def upcoming_invoice(backend: ApiBackend, request: web.Request, customer_id: str) -> dict[str, Any]:
    return {"preview": True, "invoices": backend.upcoming_invoices(customer_id)}
