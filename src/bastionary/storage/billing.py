"""ClickHouse reads and writes for rating: subscriptions, credits, usage as of a cutoff, invoices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from bastionary.credits.ledger import FUNDING_OF_KIND, Grant
from bastionary.metering.meters import Meter
from bastionary.rating.billed import Billed, Billing, stored_windows
from bastionary.rating.customers import CustomerRow, CustomerTerms, customer_terms
from bastionary.rating.invoice import Subscription
from bastionary.rating.plans import Plan
from bastionary.rating.ports import RatedInvoice
from bastionary.rating.pricing import Usage
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.rating.service_windows import ServiceWindow, net_windows
from bastionary.rating.subscriptions import SubscriptionEvent, build_subscription, utc
from bastionary.rating.tax import TaxRate, rates_of_document
from bastionary.storage.client import Client, insert_rows
from bastionary.storage.queries import QueryParameters, value_expression

SUBSCRIPTION_COLUMNS = SubscriptionRow._fields
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The ledger rows that open a grant, from the billing inputs: they count as soon as stored.
# The subscriptions customer {c} created: a subscription is its created event's customer's.
CREATED_BY = "SELECT subscription_id FROM subscriptions WHERE customer_id = {c:String} AND event_type = 'created'"
OPENING_KINDS = "('granted', 'purchased', 'voided', 'credit_note')"
# Customer {c}'s rows, and the grants other customers hold of an id {c} has rows of.
OWN_OR_HELD_ELSEWHERE = (
    "customer_id = {c:String} OR (kind IN ('granted', 'purchased')"
    " AND grant_id IN (SELECT grant_id FROM credit_ledger WHERE customer_id = {c:String}))"
)
LEDGER_COLUMNS = LedgerRow._fields
INVOICE_COLUMNS = (
    "invoice_id",
    "customer_id",
    "subscription_id",
    "plan",
    "currency",
    "kind",
    "period_start",
    "period_end",
    "usage_cutoff",
    "issued_at",
    "due_at",
    "subtotal",
    "credits_applied",
    "total",
    "status",
    "document",
    "published",
)
LINE_COLUMNS = (
    "invoice_id",
    "line_no",
    "customer_id",
    "subscription_id",
    "line_key",
    "price_key",
    "meter",
    "description",
    "quantity",
    "amount",
    "currency",
    "period_start",
    "events",
    "windows",
    "window_events",
)


class ClickHouseBillingStore:
    """Rating's tables (:class:`bastionary.rating.ports.BillingStore`), and the billing inputs' writes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- inputs --------------------------------------------------------------------------

    def insert_subscription_events(self, rows: list[SubscriptionRow]) -> None:
        if rows:
            insert_rows(self.client, "subscriptions", self._first_received(rows), SUBSCRIPTION_COLUMNS)

    def _first_received(self, rows: list[SubscriptionRow]) -> list[SubscriptionRow]:
        """``rows``, each received when its event was first stored. The table keeps the last
        copy of an event, and ``received_at`` decides which periods the rater takes for skipped
        by a backfill: a ``created`` event stored again (a record redelivered after a crash, a
        retried request) moved it, and a period that ended before the copy, not rated yet, was
        never billed (a later one lost its late usage)."""
        stored = self.client.query(
            "SELECT customer_id, subscription_id, effective_at, event_id, min(received_at) FROM subscriptions"
            " WHERE customer_id IN {cs:Array(String)} AND subscription_id IN {ss:Array(String)}"
            " AND event_id IN {es:Array(String)} GROUP BY customer_id, subscription_id, effective_at, event_id",
            parameters={
                "cs": sorted({row.customer_id for row in rows}),
                "ss": sorted({row.subscription_id for row in rows}),
                "es": sorted({row.event_id for row in rows}),
            },
        ).result_rows
        first = {(c, s, utc(at), e): utc(received) for c, s, at, e, received in stored}
        out = []
        for row in rows:
            # The table's key: only a row with all four replaces another.
            at = utc(row.effective_at)
            at = at.replace(microsecond=at.microsecond // 1000 * 1000) if at else at  # DateTime64(3)
            earlier = first.get((row.customer_id, row.subscription_id, at, row.event_id))
            out.append(row._replace(received_at=earlier) if earlier and earlier < row.received_at else row)
        return out

    def insert_customers(self, rows: list[CustomerRow]) -> None:
        if rows:
            insert_rows(self.client, "customers", rows, CustomerRow._fields)

    def insert_ledger(self, rows: list[LedgerRow]) -> None:
        if rows:
            insert_rows(self.client, "credit_ledger", rows, LEDGER_COLUMNS)

    def subscriptions(self, plans: Mapping[str, Plan], customer: str | None = None) -> list[Subscription]:
        """Every subscription as its events build it; ``customer``: that customer's only (every
        event of the subscriptions its created events name, whichever customer an event names,
        so a read for the customer builds what a whole read builds)."""
        where, params = ("", None)
        if customer is not None:
            where, params = f"WHERE subscription_id IN ({CREATED_BY})", {"c": customer}
        rows = self.client.query(
            "SELECT subscription_id, customer_id, event_type, plan, start, billing_anchor, effective_at,"
            f" received_at, backfill FROM subscriptions FINAL {where}"
            " ORDER BY subscription_id, effective_at, event_type = 'canceled', event_id",
            parameters=params,
        ).result_rows
        by_id: dict[str, list[SubscriptionEvent]] = defaultdict(list)
        for row in rows:
            by_id[row[0]].append(SubscriptionEvent(*row))
        out = []
        for subscription_id, events in by_id.items():
            sub = build_subscription(subscription_id, events, plans)
            if sub is not None:
                out.append(sub)
        return out

    def subscription_events(self, subscription_id: str) -> list[SubscriptionEvent]:
        """One subscription's stored events, in the order :func:`build_subscription` applies
        them: what the intake checks a plan change against."""
        rows = self.client.query(
            "SELECT subscription_id, customer_id, event_type, plan, start, billing_anchor, effective_at,"
            " received_at, backfill FROM subscriptions FINAL WHERE subscription_id = {s:String}"
            " ORDER BY effective_at, event_type = 'canceled', event_id",
            parameters={"s": subscription_id},
        ).result_rows
        return [SubscriptionEvent(*row) for row in rows]

    def grant_owner(self, grant_id: str) -> str | None:
        """The customer a grant id belongs to: its first stored grant's (None before one)."""
        rows = self.client.query(
            "SELECT customer_id FROM credit_ledger FINAL WHERE grant_id = {g:String}"
            " AND kind IN ('granted', 'purchased') ORDER BY recorded_at, movement_id LIMIT 1",
            parameters={"g": grant_id},
        ).result_rows
        return str(rows[0][0]) if rows else None

    def first_grant(self, grant_id: str) -> LedgerRow | None:
        """A grant id's first stored grant or purchase, the one that counts (None before one)."""
        rows = self.client.query(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM credit_ledger FINAL WHERE grant_id = {{g:String}}"
            " AND kind IN ('granted', 'purchased') ORDER BY recorded_at, movement_id LIMIT 1",
            parameters={"g": grant_id},
        ).result_rows
        return LedgerRow(*rows[0]) if rows else None

    def grants(self) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]:
        """Every customer's grants, and what stored invoices have drawn from each (applied + expired)."""
        return self.grants_as_of(None)

    def grants_as_of(
        self, moment: datetime | None, customer: str | None = None
    ) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]:
        """Grants, and what invoices issued up to ``moment`` (all, if None) drew from them;
        ``customer``: that customer's only.

        A movement counts once its invoice's row exists (the commit marker of ``store_invoices``):
        movements a crashed store left without their invoice are not drawn.
        """
        stored = (
            "SELECT invoice_id FROM invoices"
            if moment is None
            else "SELECT invoice_id FROM invoices FINAL WHERE issued_at <= {at:DateTime64(3, 'UTC')}"
        )
        params: dict[str, Any] = {"at": moment} if moment is not None else {}
        only = ""
        if customer is not None:
            # With the other customers' grants of the customer's grant ids: the id is theirs if
            # theirs came first, and the rater, reading every customer, never draws on it.
            only, params["c"] = f"({OWN_OR_HELD_ELSEWHERE}) AND ", customer
        # In the order they were recorded: a grant id is its first grant's, and its first
        # grant's customer's. The intake refuses a grant or a void of an id that another
        # customer's grant holds (customer_mismatch); rows stored before that rule are left out
        # here, and so is a later grant of an id by its own customer (a retried request with a
        # new event id, or an id reused for another amount: it must neither double nor replace
        # the credit the first one granted).
        rows = self.client.query(
            "SELECT kind, grant_id, customer_id, amount, currency, priority, effective_at, expires_at"
            f" FROM credit_ledger FINAL WHERE {only}(kind IN {OPENING_KINDS} OR invoice_id IN ({stored}))"
            " ORDER BY recorded_at, movement_id",
            parameters=params or None,
        ).result_rows
        granted: dict[str, tuple[Any, ...]] = {}
        voided: dict[tuple[str, str], datetime] = {}
        drawn: defaultdict[str, Decimal] = defaultdict(Decimal)
        for kind, grant_id, customer, amount, currency, priority, effective_at, expires_at in rows:
            if kind in FUNDING_OF_KIND:  # a carried row is here only once its invoice is stored
                if grant_id not in granted:
                    granted[grant_id] = (kind, customer, amount, currency, priority, utc(effective_at), utc(expires_at))
            elif kind == "voided":
                # The earliest void wins: a later one (a retried void, its effective_at its own
                # time by default) must not make the grant usable again until then.
                void_at, key = utc(effective_at), (grant_id, customer)
                voided[key] = min(voided.get(key, void_at), void_at)
            else:
                drawn[grant_id] += Decimal(amount)
        by_customer: dict[str, list[Grant]] = defaultdict(list)
        for grant_id, (kind, customer, amount, currency, priority, effective_at, expires_at) in granted.items():
            grant = Grant(
                grant_id,
                customer,
                Decimal(amount),
                currency,
                priority,
                effective_at,
                expires_at,
                voided.get((grant_id, customer)),
                FUNDING_OF_KIND[kind],
            )
            by_customer[customer].append(grant)
        return dict(by_customer), dict(drawn)

    def customer_terms(self, customer: str | None = None) -> dict[str, CustomerTerms]:
        """Each customer's terms from its newest record (customers without one have none);
        ``customer``: that customer's only."""
        where, params = ("WHERE customer_id = {c:String}", {"c": customer}) if customer is not None else ("", None)
        rows = self.client.query(
            "SELECT customer_id, name, email, address, tax_id, tax_exempt, auto_topup, credit_limit"
            f" FROM customers FINAL {where}",
            parameters=params,
        ).result_rows
        return {row[0]: customer_terms(*row[1:]) for row in rows}

    # -- usage ---------------------------------------------------------------------------

    def usage_by_customer(
        self,
        meter: Meter,
        filters: dict[str, str],
        start: datetime,
        end: datetime,
        as_of: datetime,
        customer: str | None = None,
    ) -> dict[str, Usage]:
        """Each customer's meter value over [start, end) counting only rows ingested before
        ``as_of``; ``customer``: that customer's only."""
        params: QueryParameters = {"meter": meter.key, "start": start, "end": end, "as_of": as_of}
        where = ["customer_id = {customer:String}"] if customer is not None else []
        if customer is not None:
            params["customer"] = customer
        where += [
            "meter = {meter:String}",
            "window_start >= {start:DateTime('UTC')}",
            "window_start < {end:DateTime('UTC')}",
            "ingested_minute < {as_of:DateTime('UTC')}",
        ]
        for i, (name, value) in enumerate(sorted(filters.items())):
            params[f"k{i}"], params[f"v{i}"] = name, value
            where.append(f"group_values[{{k{i}:String}}] = {{v{i}:String}}")
        sql = (
            f"SELECT customer_id, {value_expression(meter.aggregation)}, sum(event_count)"
            f" FROM usage_rollup_1m WHERE {' AND '.join(where)} GROUP BY customer_id"
        )
        return {
            customer: Usage(Decimal(value or 0), int(events))
            for customer, value, events in self.client.query(sql, parameters=params).result_rows
        }

    # -- invoices ------------------------------------------------------------------------

    def invoice_ids(self, subscription_id: str | None = None) -> set[str]:
        where, params = (
            ("WHERE subscription_id = {s:String}", {"s": subscription_id}) if subscription_id else ("", None)
        )
        sql = f"SELECT DISTINCT invoice_id FROM invoices {where}"
        return {row[0] for row in self.client.query(sql, parameters=params).result_rows}

    def unpublished_documents(self) -> list[str]:
        """Stored invoices not yet confirmed on billing.invoices (a rater stopped in between)."""
        return [
            row[0] for row in self.client.query("SELECT document FROM invoices FINAL WHERE published = 0").result_rows
        ]

    def billed(self, subscription_id: str) -> Billed:
        """What the subscription's stored invoices billed: lines whose invoice row exists."""
        rows = self.client.query(
            "SELECT period_start, line_key, sum(quantity), sum(amount),"
            # A key's events are known only if every line of it has them.
            " if(countIf(events IS NULL) = 0, sum(assumeNotNull(events)), NULL),"
            # A key's windows are known only if every line of it that bills something has them.
            " countIf(empty(windows) AND (quantity != 0 OR amount != 0)) = 0,"
            # Plain values: integer microseconds and decimal text, read the same over HTTP and in chdb.
            # A window's events: NULL where its line kept none (window_events empty, older lines).
            " groupArrayArray(arrayMap((w, i) -> (toUnixTimestamp64Micro(w.1), toUnixTimestamp64Micro(w.2),"
            "   toString(w.3), toString(w.4), if(length(window_events) = length(windows), window_events[i], NULL)),"
            "   windows, arrayEnumerate(windows)))"
            " FROM invoice_lines FINAL"
            " WHERE subscription_id = {s:String}"
            " AND invoice_id IN (SELECT invoice_id FROM invoices WHERE subscription_id = {s:String})"
            " GROUP BY period_start, line_key",
            parameters={"s": subscription_id},
        ).result_rows
        return {
            (utc(start), key): Billing(
                Decimal(q),
                Decimal(a),
                None if events is None else int(events),
                net_windows(_windows(windows)) if known else None,
            )
            for start, key, q, a, events, known, windows in rows
        }

    def rates_then(self, customer_id: str, subscription_id: str) -> dict[datetime, list[TaxRate]]:
        # By customer first, the table's key, and only the fields the rates are read from:
        # a subscription catching up on many periods asks this for each invoice.
        rows = self.client.query(
            "SELECT period_start, toString(subtotal), JSONHas(document, 'tax_rates'),"
            " JSONExtractRaw(document, 'tax_rates'), JSONExtractRaw(document, 'tax_lines')"
            " FROM invoices FINAL WHERE customer_id = {c:String} AND subscription_id = {s:String}"
            " AND kind = 'period'",
            parameters={"c": customer_id, "s": subscription_id},
        ).result_rows
        out = {}
        for start, *columns in rows:
            rates = _rates_of_columns(*columns)
            if rates is not None:
                out[utc(start)] = rates
        return out

    def rates_first_billed(self, customer_id: str, subscription_id: str) -> dict[tuple[datetime, str], list[TaxRate]]:
        rows = self.client.query(
            "SELECT l.period_start, l.line_key, toString(i.subtotal), JSONHas(i.document, 'tax_rates'),"
            " JSONExtractRaw(i.document, 'tax_rates'), JSONExtractRaw(i.document, 'tax_lines')"
            " FROM (SELECT invoice_id, period_start, line_key FROM invoice_lines FINAL"
            "       WHERE subscription_id = {s:String} AND amount > 0) AS l"
            " INNER JOIN (SELECT invoice_id, issued_at, subtotal, document FROM invoices FINAL"
            "       WHERE customer_id = {c:String} AND subscription_id = {s:String}) AS i"
            " ON l.invoice_id = i.invoice_id"
            " ORDER BY i.issued_at DESC, i.invoice_id DESC",
            parameters={"c": customer_id, "s": subscription_id},
        ).result_rows
        out: dict[tuple[datetime, str], list[TaxRate]] = {}
        for start, key, *columns in rows:  # latest first: the first invoice wins
            rates = _rates_of_columns(*columns)
            if rates is None:
                out.pop((utc(start), key), None)
            else:
                out[(utc(start), key)] = rates
        return out

    def store_invoices(self, rated: list[RatedInvoice]) -> None:
        """Lines, then ledger movements, then the invoice rows: the invoice row is the commit marker.

        ``billed`` counts a line, and ``grants`` / ``grants_as_of`` a movement, only once its
        invoice's row exists; ``invoice_ids`` (what is rated) is the invoice rows. Every row is
        keyed by a deterministic id (lines by (invoice id, line no), movements by UUIDv5 of
        (kind, grant, invoice)), so storing the same invoice again lands on the same keys.
        An insert lands whole or, were it cut between blocks, a prefix of its rows; the rows
        are in rating order, so a prefix of invoice rows is what stopping after those invoices
        would have left (each one's earlier periods and draws are committed before it).

        What a crash (or a failed insert) at each point leaves, and what the next run does:
        - before the stale read or the line rows: nothing of this attempt; rated again.
        - after the line rows, before the movements: lines without an invoice row. ``billed``
          ignores them; the period is rated again, the same invoice rewrites the same lines.
        - after the movements, before the invoice rows: lines and movements without an invoice
          row. Not drawn (the grants keep their balance), not announced (credit events are
          sent only from a stored invoice's document), not in ``billed``; the period is rated
          again with the same balances, so the same invoice rewrites the same rows under the
          same movement ids (``recorded_at`` becomes the later attempt's).
        - after the invoice rows: stored; the next run republishes the documents as stored.
        If the inputs changed in between (a grant granted or voided, a backdated plan change),
        the re-rated invoice may differ from the interrupted attempt: the attempt's line and
        movement rows that it does not rewrite are then rewritten with zero quantity and amount
        in the same inserts (found by the stale read below), so the stored rows of an invoice
        never add up to more than its document says, and an orphan movement never draws.
        """
        line_rows: list[tuple[object, ...]] = []
        ledger_rows: list[LedgerRow] = []
        invoice_rows: list[tuple[object, ...]] = []
        counts: dict[str, int] = {}
        movements: set[str] = set()
        for item in rated:
            data, cutoff, lines, ledger = item.invoice.document(), item.cutoff, item.lines, item.ledger
            currency = data["currency"]
            period_start = _parse(data["period_start"])
            counts[data["invoice_id"]] = len(lines)
            for n, line in enumerate(lines):
                line_rows.append(
                    (
                        data["invoice_id"],
                        n,
                        data["customer_id"],
                        data["subscription_id"],
                        line.line_key,
                        line.price_key,
                        line.meter or "",
                        line.description,
                        line.quantity,
                        Decimal(line.as_dict(currency)["amount"]),
                        currency,
                        line.period_start or period_start,
                        line.events,
                        *_window_columns(stored_windows(line.windows, currency)),
                    )
                )
            ledger_rows.extend(ledger)
            movements.update(row.movement_id for row in ledger)
            invoice_rows.append(self._invoice_row(data, cutoff, published=0))
        stale_lines, stale_movements = self._stale_rows(rated, counts, movements)
        line_rows.extend(stale_lines)
        ledger_rows.extend(stale_movements)
        if line_rows:
            insert_rows(self.client, "invoice_lines", line_rows, LINE_COLUMNS)
        self.insert_ledger(ledger_rows)
        if invoice_rows:
            insert_rows(self.client, "invoices", invoice_rows, INVOICE_COLUMNS)

    def _stale_rows(
        self, rated: list[RatedInvoice], counts: dict[str, int], movements: set[str]
    ) -> tuple[list[tuple[object, ...]], list[LedgerRow]]:
        """Rows an interrupted earlier store of these invoices left that this one does not
        rewrite, zeroed (none unless a store crashed and the inputs changed since)."""
        if not rated:
            return [], []
        ids = list(counts)
        customers = sorted({item.invoice.customer_id for item in rated})
        lines = self.client.query(
            "SELECT DISTINCT invoice_id, line_no, customer_id, subscription_id, currency, period_start"
            " FROM invoice_lines WHERE invoice_id IN {ids:Array(String)}",
            parameters={"ids": ids},
        ).result_rows
        zero = Decimal(0)
        stale_lines: list[tuple[object, ...]] = [
            (invoice, line_no, customer, subscription, "", "", "", "", zero, zero, currency, period_start, None, [], [])
            for invoice, line_no, customer, subscription, currency, period_start in lines
            if line_no >= counts[invoice]
        ]
        ledger = self.client.query(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM credit_ledger FINAL"
            " WHERE customer_id IN {customers:Array(String)} AND invoice_id IN {ids:Array(String)}"
            " AND kind IN ('applied', 'expired', 'carried')",
            parameters={"customers": customers, "ids": ids},
        ).result_rows
        now = datetime.now(UTC)
        stale_movements = [
            LedgerRow(*row)._replace(amount=zero, recorded_at=now) for row in ledger if row[0] not in movements
        ]
        return stale_lines, stale_movements

    def mark_published(self, invoices: list[tuple[dict[str, Any], datetime]]) -> None:
        rows = [self._invoice_row(data, cutoff, published=1) for data, cutoff in invoices]
        if rows:
            insert_rows(self.client, "invoices", rows, INVOICE_COLUMNS)

    @staticmethod
    def _invoice_row(data: dict[str, Any], cutoff: datetime, published: int) -> tuple[object, ...]:
        return (
            data["invoice_id"],
            data["customer_id"],
            data["subscription_id"],
            data["plan"],
            data["currency"],
            data["kind"],
            _parse(data["period_start"]),
            _parse(data["period_end"]),
            cutoff,
            _parse(data["issued_at"]),
            _parse(data["due_at"]),
            Decimal(data["subtotal"]),
            Decimal(data["credits_applied"]),
            Decimal(data["total"]),
            data["status"],
            orjson.dumps(data).decode(),
            published,
        )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _rates_of_columns(subtotal: str, has_rates: int, tax_rates: str, tax_lines: str) -> list[TaxRate] | None:
    """An invoice's rates from the four columns both rate queries select: its subtotal, whether
    its document has ``tax_rates``, and that field and ``tax_lines`` as raw JSON."""
    document: dict[str, Any] = {"subtotal": subtotal, "tax_lines": orjson.loads(tax_lines or "[]")}
    if has_rates:
        document["tax_rates"] = orjson.loads(tax_rates)
    return rates_of_document(document)


def _window_columns(windows: tuple[ServiceWindow, ...]) -> tuple[list[tuple[object, ...]], list[int | None]]:
    """``invoice_lines.windows`` and ``window_events``: the spans, and their events apart."""
    return [(w.start, w.end, w.quantity, w.amount) for w in windows], [w.events for w in windows]


def _windows(rows: list[tuple[int, int, str, str, int | None]]) -> list[ServiceWindow]:
    return [
        ServiceWindow(_micros(start), _micros(end), Decimal(q), Decimal(a), events) for start, end, q, a, events in rows
    ]


def _micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
