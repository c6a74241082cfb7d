"""The ClickHouse reads ``bastionary demo`` and ``bastionary bench`` make, not the product's.

The demo summarises what landed and follows invoices and dunning; the benchmarks count
flushes, check totals against their ground truth and poll for visible events; the rating
benchmark also seeds its inputs (the one write here). None of this serves the worker, the
API or the operator's CLI: those read through their own stores (:mod:`bastionary.storage.usage`,
:mod:`~bastionary.storage.billing`, :mod:`~bastionary.storage.dunning`, ...).

Each function takes a clickhouse-connect client and returns plain typed values; values are
passed as query parameters, never formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from bastionary.metering.meters import Meter
from bastionary.metering.ports import RollupRow
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.storage.client import Client
from bastionary.storage.queries import usage_query

# -- usage: what landed ----------------------------------------------------------------------


class MeterTotal(NamedTuple):
    """One row of :func:`bastionary.storage.queries.usage_query` over all time."""

    customer_id: str
    window_start: datetime
    window_end: datetime
    group: dict[str, str]
    value: Decimal


class IngestTotals(NamedTuple):
    """Sums over ``ingest_progress``: what the pipeline counted, dropped and dead-lettered."""

    accepted: int
    duplicates: int
    dead_lettered: int


class Flushes(NamedTuple):
    """The flushes recorded in ``ingest_progress`` (one per ``written_at``)."""

    number: int
    first_written_ms: int  # the first flush's written_at, Unix milliseconds
    max_records: int  # records of the largest flush
    max_events: int  # events (accepted, duplicate or dead-lettered) of the largest flush


class FirstFlush(NamedTuple):
    records: int
    events: int  # accepted, duplicate or dead-lettered


def meter_totals(client: Client, meter: Meter, group_by: Iterable[str] = ()) -> list[MeterTotal]:
    """A meter's totals per customer (and per group of ``group_by``) over all time."""
    sql, params = usage_query(meter, group_by=list(group_by))
    return [
        MeterTotal(str(customer), start, end, dict(group), Decimal(value))
        for customer, start, end, group, value in client.query(sql, parameters=params).result_rows
    ]


def ingest_totals(client: Client) -> IngestTotals:
    accepted, duplicates, dead = client.query(
        "SELECT sum(events_accepted), sum(duplicates), sum(dead_lettered) FROM ingest_progress FINAL"
    ).result_rows[0]
    return IngestTotals(int(accepted or 0), int(duplicates or 0), int(dead or 0))


def stored_event_count(client: Client) -> int:
    """Distinct events in ``usage_events``."""
    return int(client.query("SELECT count() FROM usage_events FINAL").result_rows[0][0])


def flushes(client: Client) -> Flushes:
    flushed, first_ms, max_records, max_events = client.query(
        "SELECT uniqExact(written_at), toUnixTimestamp64Milli(min(written_at)), max(r), max(e) FROM (SELECT"
        " written_at, sum(records) AS r, sum(events_accepted + duplicates + dead_lettered) AS e"
        " FROM ingest_progress GROUP BY written_at)"
    ).result_rows[0]
    return Flushes(int(flushed), int(first_ms), int(max_records), int(max_events))


def first_flush(client: Client) -> FirstFlush:
    """What the first flush (the earliest ``written_at``) carried."""
    records, events = client.query(
        "SELECT sum(records), sum(events_accepted + duplicates + dead_lettered) FROM ingest_progress"
        " WHERE written_at = (SELECT min(written_at) FROM ingest_progress)"
    ).result_rows[0]
    return FirstFlush(int(records), int(events))


def visible_event_ids(client: Client, source: str, since_ms: int) -> list[str]:
    """Ids of ``source``'s events in ``usage_events`` ingested at or after ``since_ms`` (Unix ms)."""
    rows = client.query(
        "SELECT event_id FROM usage_events WHERE source = {s:String}"
        " AND ingested_at >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')",
        parameters={"s": source, "lo": since_ms},
    ).result_rows
    return [str(event_id) for (event_id,) in rows]


# -- billing: invoices, receivables, payments ------------------------------------------------


class PeriodInvoice(NamedTuple):
    subscription_id: str
    customer_id: str
    plan: str
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    document: str  # the published invoice data, as JSON


class OpenReceivable(NamedTuple):
    invoice_id: str
    customer_id: str
    currency: str
    total: Decimal
    due_at: datetime  # UTC
    period_start: int  # Unix seconds


class ReceivablePeriod(NamedTuple):
    invoice_id: str
    total: Decimal
    period_start: int  # Unix seconds
    period_end: int  # Unix seconds


class PublishedInvoices(NamedTuple):
    invoices: int
    total: Decimal
    credits_applied: Decimal


def period_invoices(client: Client) -> list[PeriodInvoice]:
    """Every period invoice, in period then subscription order."""
    rows = client.query(
        "SELECT subscription_id, customer_id, plan, currency, subtotal, credits_applied, total, document"
        " FROM invoices FINAL WHERE kind = 'period' ORDER BY period_start, subscription_id"
    ).result_rows
    return [
        PeriodInvoice(
            str(sub),
            str(customer),
            str(plan),
            str(currency),
            Decimal(subtotal),
            Decimal(credits),
            Decimal(total),
            str(document),
        )
        for sub, customer, plan, currency, subtotal, credits, total, document in rows
    ]


def receivables_due(client: Client) -> list[OpenReceivable]:
    """Receivables with something to pay, in the order they were issued."""
    rows = client.query(
        "SELECT invoice_id, customer_id, currency, total, due_at, toUnixTimestamp(period_start)"
        " FROM receivables FINAL WHERE total > 0 ORDER BY issued_at, invoice_id"
    ).result_rows
    return [
        OpenReceivable(str(invoice), str(customer), str(currency), Decimal(total), _utc(due_at), int(start))
        for invoice, customer, currency, total, due_at, start in rows
    ]


def receivable_periods(client: Client) -> list[ReceivablePeriod]:
    rows = client.query(
        "SELECT invoice_id, total, toUnixTimestamp(period_start), toUnixTimestamp(period_end) FROM receivables FINAL"
    ).result_rows
    return [ReceivablePeriod(str(invoice), Decimal(total), int(start), int(end)) for invoice, total, start, end in rows]


def paid_invoice_ids(client: Client) -> set[str]:
    """Invoices with a payment event recorded."""
    return {str(r[0]) for r in client.query("SELECT DISTINCT invoice_id FROM payments FINAL").result_rows}


def published_invoices(client: Client) -> PublishedInvoices:
    count, total, credits = client.query(
        "SELECT count(), sum(total), sum(credits_applied) FROM invoices FINAL WHERE published = 1"
    ).result_rows[0]
    return PublishedInvoices(int(count), Decimal(total), Decimal(credits))


def seed_rating_inputs(
    client: Client, subscriptions: list[SubscriptionRow], rollups: list[RollupRow], ledger: list[LedgerRow]
) -> None:
    """The rating benchmark's inputs, written straight into their tables."""
    client.insert("subscriptions", subscriptions, column_names=SubscriptionRow._fields)
    client.insert("usage_rollup_1m", rollups, column_names=RollupRow._fields)
    client.insert("credit_ledger", ledger, column_names=LedgerRow._fields)


# -- dunning ---------------------------------------------------------------------------------


class DunningNotice(NamedTuple):
    notice_id: str  # what emails and webhooks carry
    invoice_id: str
    customer_id: str
    step: int
    action: str
    amount_due: Decimal
    currency: str
    at: datetime  # UTC, on the dunning clock


def dunning_notices(client: Client) -> list[DunningNotice]:
    """Every notice dunning decided."""
    rows = client.query(
        "SELECT event_id, invoice_id, customer_id, step, action, amount_due, currency, at"
        " FROM dunning_events FINAL WHERE kind = 'notice'"
    ).result_rows
    return [
        DunningNotice(str(e), str(i), str(c), int(step), str(action), Decimal(amount), str(currency), _utc(at))
        for e, i, c, step, action, amount, currency, at in rows
    ]


def dunning_states(client: Client, invoice_id: str) -> list[str]:
    """The states an invoice went through in dunning, in order."""
    rows = client.query(
        "SELECT detail FROM dunning_events FINAL WHERE kind = 'state' AND invoice_id = {i:String} ORDER BY step",
        parameters={"i": invoice_id},
    ).result_rows
    return [str(r[0]) for r in rows]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
