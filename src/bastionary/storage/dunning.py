"""ClickHouse reads and writes for dunning: payments, cases and the dunning_events trail."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from bastionary.dunning.engine import BELOW, MINIMUM, RESUSPENDED, Case, InvoiceFacts, Pause, Record
from bastionary.dunning.ports import PaymentRow, ReceivableRow, TrailRow
from bastionary.rating.events import InvalidBillingEvent, preview
from bastionary.rating.subscriptions import utc as _utc
from bastionary.storage.client import Client, insert_rows

RECEIVABLE_COLUMNS = ReceivableRow._fields
PAYMENT_COLUMNS = PaymentRow._fields
EVENT_COLUMNS = (
    "event_id",
    "invoice_id",
    "customer_id",
    "kind",
    "step",
    "action",
    "channel",
    "detail",
    "amount_due",
    "currency",
    "at",
    "until",
    "recorded_at",
    "document",
    "published",
)


class ClickHouseDunningStore:
    """Dunning's tables (:class:`bastionary.dunning.ports.DunningStore`), and the intake writes."""

    def __init__(self, client: Client):
        self.client = client

    # -- inputs --------------------------------------------------------------------------

    def insert_receivables(self, rows: list[ReceivableRow]) -> None:
        if rows:
            insert_rows(self.client, "receivables", rows, RECEIVABLE_COLUMNS)

    def invoice_currency_customer(self, invoice_id: str) -> tuple[str, str] | None:
        """(currency, customer) of an invoice: what a payment is checked against and stored with."""
        found = self._invoice(invoice_id, "currency, customer_id")
        return (found[0], found[1]) if found else None

    def invoice_customer(self, invoice_id: str) -> str | None:
        found = self._invoice(invoice_id, "customer_id")
        return found[0] if found else None

    def invoice_customer_plan(self, invoice_id: str) -> tuple[str, str] | None:
        """(customer, plan) of an invoice: a response needs both (its row, its policy)."""
        found = self._invoice(invoice_id, "customer_id, plan")
        return (found[0], found[1]) if found else None

    def _invoice(self, invoice_id: str, columns: str) -> tuple[Any, ...] | None:
        """An invoice as dunning received it, else as the rater stored it. The rater stores an
        invoice before it publishes it on billing.invoices, and a payment travels on its own
        topic: one made the moment the invoice shows in the API can reach dunning before the
        invoice does, and without the second read it was dead-lettered as unknown_invoice."""
        for table in ("receivables", "invoices"):
            rows = self.client.query(
                f"SELECT {columns} FROM {table} WHERE invoice_id = {{i:String}} LIMIT 1", parameters={"i": invoice_id}
            ).result_rows
            if rows:
                return tuple(rows[0])
        return None

    def insert_payments(self, rows: list[PaymentRow]) -> None:
        if rows:
            self._check_payment_ids(rows)
            insert_rows(self.client, "payments", rows, PAYMENT_COLUMNS)

    def _check_payment_ids(self, rows: list[PaymentRow]) -> None:
        """Raise ``payment_id_conflict`` for a row whose (kind, payment_id) is stored already for
        another invoice, or for another amount or currency. ``payments`` keeps one row per that
        key, the last written: without this, a payment naming another customer's payment_id
        (any key may post payments for its own invoices) replaced that customer's payment and
        had them dunned, and a duplicate with another amount replaced the amount counted."""
        stored = self.client.query(
            "SELECT kind, payment_id, invoice_id, amount, currency FROM payments FINAL"
            " WHERE payment_id IN {ids:Array(String)}",
            parameters={"ids": sorted({row.payment_id for row in rows})},
        ).result_rows
        earlier = {
            (kind, payment_id): (invoice, Decimal(amount), currency)
            for kind, payment_id, invoice, amount, currency in stored
        }
        for row in rows:
            found = earlier.get((row.kind, row.payment_id))
            stored_as = _stored_otherwise(found, row) if found is not None else None
            if stored_as is not None:
                raise _payment_id_conflict(row, stored_as)

    def insert_trail(self, rows: list[TrailRow]) -> None:
        now = _now()
        values = [
            (
                r.event_id,
                r.invoice_id,
                r.customer_id,
                r.kind,
                r.step,
                r.action,
                r.channel,
                r.detail[:2048],
                Decimal(0),
                "",
                r.at,
                r.until,
                now,
                "",
                1,
            )
            for r in rows
        ]
        if values:
            insert_rows(self.client, "dunning_events", values, EVENT_COLUMNS)

    # -- cases ---------------------------------------------------------------------------

    def cases(self, customers: set[str] | None = None) -> list[Case]:
        """Every invoice with something to pay, with its payments and dunning history.

        ``customers`` None = all. Settled invoices come too: a refund can reopen one, and a
        suspension is lifted by the decision that sees the invoice settled."""
        invoices = self.client.query(
            "SELECT invoice_id, customer_id, plan, currency, total, issued_at, due_at, period_start, period_end,"
            " backfill FROM receivables FINAL WHERE total > 0"
        ).result_rows
        cases = {
            row[0]: Case(
                InvoiceFacts(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    Decimal(row[4]),
                    _utc(row[5]),
                    _utc(row[6]),
                    _utc(row[7]),
                    _utc(row[8]),
                    bool(row[9]),
                )
            )
            for row in invoices
            if customers is None or row[1] in customers
        }
        if not cases:
            return []
        for invoice_id, kind, amount in self.client.query(
            "SELECT invoice_id, kind, sum(amount) FROM payments FINAL GROUP BY invoice_id, kind"
        ).result_rows:
            case = cases.get(invoice_id)
            if case is None:
                continue
            case.count(kind, Decimal(amount))
        self._load_trail(cases)
        emails = self.billing_emails()
        for case in cases.values():
            case.recipient_email = emails.get(case.invoice.customer_id)
        return list(cases.values())

    def _load_trail(self, cases: dict[str, Case]) -> None:
        rows = self.client.query(
            "SELECT invoice_id, kind, step, action, detail, at, until FROM dunning_events FINAL"
            " WHERE kind IN ('notice', 'skipped', 'state', 'reinstated', 'minimum', 'response')"
            " ORDER BY invoice_id, at, recorded_at"
        ).result_rows
        disputes: dict[str, list[datetime]] = defaultdict(list)
        resolved_before_opened: dict[str, list[datetime]] = defaultdict(list)
        states: dict[str, list[tuple[int, datetime, str]]] = defaultdict(list)
        minimums: dict[str, list[tuple[int, datetime, str]]] = defaultdict(list)
        suspensions: dict[str, int] = defaultdict(int)
        for invoice_id, kind, step, action, detail, at, until in rows:
            case = cases.get(invoice_id)
            if case is None:
                continue
            at = _utc(at)
            if kind in ("notice", "skipped"):
                case.steps_done.add(step)
                if kind == "notice" and action == "suspend":  # a suspend step, or one applied again
                    suspensions[invoice_id] += 1
            elif kind == "reinstated":
                case.reinstatements += 1
            elif kind == "state":
                states[invoice_id].append((step, at, detail))
            elif kind == MINIMUM:
                minimums[invoice_id].append((step, at, detail))
            elif kind == "response" and action == "promised":
                case.pauses.append(Pause(at, _utc(until), "promised"))
            elif kind == "response" and action == "disputed":
                disputes[invoice_id].append(at)
            elif kind == "response" and action == "dispute_resolved":
                if disputes[invoice_id]:
                    # One resolution ends the invoice's dispute: a dispute sent twice (a retry with a
                    # new id) would otherwise stay open and pause the invoice's dunning for good.
                    case.pauses.append(Pause(disputes.pop(invoice_id)[0], at, "disputed"))
                else:
                    resolved_before_opened[invoice_id].append(at)
        for invoice_id, case in cases.items():
            # Counted as entitlements count them (storage/entitlements.py): suspended while its
            # suspend notices outnumber its reinstatements, whatever order the clock gave the rows.
            case.suspended = suspensions[invoice_id] > case.reinstatements
        for invoice_id, recorded in states.items():
            # In the order the engine numbered them: the engine reads when the case stood
            # settled from this history (engine.settled_stretches), the next number from its end.
            recorded.sort()
            case = cases[invoice_id]
            case.state_history = [(at, detail) for _, at, detail in recorded]
            case.state_changes, _, case.state = recorded[-1]
        for invoice_id, recorded in minimums.items():
            # The same for the minimum rows (engine.below_minimum_stretches).
            recorded.sort()
            case = cases[invoice_id]
            case.minimum_history = [(at, detail) for _, at, detail in recorded]
            case.minimum_changes = recorded[-1][0]
            case.below_minimum = recorded[-1][2] == BELOW
        self._drop_disputes_resolved_after_them(disputes, resolved_before_opened)
        for invoice_id, opened in disputes.items():
            for start in opened:
                cases[invoice_id].pauses.append(Pause(start, None, "disputed"))

    def _drop_disputes_resolved_after_them(
        self, disputes: dict[str, list[datetime]], resolved_before_opened: dict[str, list[datetime]]
    ) -> None:
        """Drop from ``disputes`` (still open, by ``time``) those a resolution dated before them
        was recorded after: resolved, in the order they were sent. A customer's dispute may be
        dated up to MAX_FUTURE_SKEW ahead, and an operator resolving it at once dates the
        resolution now: read by ``time`` alone it came first, resolved nothing, and the dispute
        paused the invoice's dunning for good. Asked only for such invoices (rare)."""
        invoices = sorted(i for i, opened in disputes.items() if opened and resolved_before_opened.get(i))
        if not invoices:
            return
        rows = self.client.query(
            "SELECT invoice_id, action, at, recorded_at FROM dunning_events FINAL"
            " WHERE kind = 'response' AND action IN ('disputed', 'dispute_resolved')"
            " AND invoice_id IN {ids:Array(String)}",
            parameters={"ids": invoices},
        ).result_rows
        opened_recorded: dict[tuple[str, datetime], datetime] = {}
        last_resolution_recorded: dict[str, datetime] = {}
        for invoice_id, action, at, recorded_at in rows:
            at, recorded_at = _utc(at), _utc(recorded_at)
            if action == "disputed":
                key = (invoice_id, at)
                opened_recorded[key] = min(recorded_at, opened_recorded.get(key, recorded_at))
            elif at in resolved_before_opened[invoice_id]:
                last_resolution_recorded[invoice_id] = max(
                    recorded_at, last_resolution_recorded.get(invoice_id, recorded_at)
                )
        for invoice_id in invoices:
            resolved = last_resolution_recorded.get(invoice_id)
            if resolved is not None:
                # A tie (the same millisecond) proves nothing: the dispute stays open.
                disputes[invoice_id] = [
                    start
                    for start in disputes[invoice_id]
                    if opened_recorded.get((invoice_id, start), resolved) >= resolved
                ]

    def billing_emails(self) -> dict[str, str]:
        rows = self.client.query(
            "SELECT customer_id, argMax(billing_email, effective_at) FROM subscriptions"
            " WHERE billing_email != '' GROUP BY customer_id"
        ).result_rows
        return dict(rows)

    # -- decisions -----------------------------------------------------------------------

    def store_decisions(self, decided: list[tuple[Case, Record]], at: datetime, published: int = 0) -> None:
        now = _now()
        rows = []
        for case, record in decided:
            invoice = case.invoice
            document = orjson.dumps(record.data).decode() if record.data is not None else ""
            rows.append(
                (
                    record.event_id,
                    invoice.invoice_id,
                    invoice.customer_id,
                    record.kind,
                    record.step,
                    record.action,
                    "",
                    record.detail,
                    case.amount_due,
                    invoice.currency,
                    at,
                    None,
                    now,
                    document,
                    published if record.publish else 1,
                )
            )
        if rows:
            insert_rows(self.client, "dunning_events", rows, EVENT_COLUMNS)

    def unpublished(self) -> list[tuple[str, str, str, str]]:
        """(kind, customer_id, at, document) of decisions stored but not confirmed on the topic."""
        return [
            (kind, customer, _utc(at).isoformat(), document)
            for kind, customer, at, document in self.client.query(
                "SELECT kind, customer_id, at, document FROM dunning_events FINAL WHERE published = 0"
            ).result_rows
        ]

    def mark_published(self, published: list[tuple[str, dict[str, Any]]]) -> None:
        """Rewrite each published row with published=1 (the row with 1 wins on merge)."""
        if not published:
            return
        ids = [data.get("notice_id") or data.get("reinstatement_id") for _, data in published]
        rows = self.client.query(
            f"SELECT {', '.join(EVENT_COLUMNS[:-1])} FROM dunning_events FINAL WHERE event_id IN {{ids:Array(String)}}",
            parameters={"ids": ids},
        ).result_rows
        if rows:
            insert_rows(self.client, "dunning_events", [(*row, 1) for row in rows], EVENT_COLUMNS)

    def delivered_channels(self, notice_id: str) -> set[str]:
        rows = self.client.query(
            "SELECT DISTINCT channel FROM dunning_events WHERE kind = 'delivered' AND startsWith(event_id, {n:String})",
            parameters={"n": f"{notice_id}:"},
        ).result_rows
        return {row[0] for row in rows}

    # -- reports -------------------------------------------------------------------------

    def funnel(self, within_days: int) -> list[tuple[int, str, int, int, int]]:
        """(step, action, sent, paid_within, paid_ever): notices sent per step, and how many of
        their invoices were paid within N days.

        Each notice is paired with the invoice's first payment in full at or after it (ASOF): a
        case paid, reopened by a chargeback and dunned again is not counted as converted by the
        payment it had before the notice. A suspension applied again after such a reopening
        (``detail`` resuspended) is the step's second notice to one invoice, not another
        invoice reaching the step, so it is left out."""
        rows: list[tuple[int, str, int, int, int]] = self.client.query(
            "SELECT n.step, n.action, count() AS sent,"
            " countIf(p.invoice_id != '' AND p.at <= n.at + toIntervalDay({d:UInt32})) AS paid_within,"
            " countIf(p.invoice_id != '') AS paid_ever"
            " FROM (SELECT invoice_id, step, action, at FROM dunning_events FINAL"
            "       WHERE kind = 'notice' AND detail != {resuspended:String}) AS n"
            " ASOF LEFT JOIN (SELECT invoice_id, at FROM dunning_events FINAL"
            "                 WHERE kind = 'state' AND detail = 'paid') AS p"
            " ON n.invoice_id = p.invoice_id AND p.at >= n.at"
            " GROUP BY n.step, n.action ORDER BY n.step",
            parameters={"d": within_days, "resuspended": RESUSPENDED},
        ).result_rows  # unmatched rows of the LEFT JOIN carry defaults: invoice_id '' (no setting: readers may not set any)
        return rows


def _stored_otherwise(stored: tuple[str, Decimal, str], row: PaymentRow) -> str | None:
    """How a payment stored under ``row``'s key differs from ``row``, or None when it does not."""
    invoice, amount, currency = stored
    if invoice != row.invoice_id:
        # Not named: the other invoice may be another customer's.
        return "another invoice"
    # A failed payment counts for nothing: a retry may report it without its amount.
    if row.kind != "failed" and (amount, currency) != (row.amount, row.currency):
        return f"{amount.normalize():f} {currency}"
    return None


def _payment_id_conflict(row: PaymentRow, stored_as: str) -> InvalidBillingEvent:
    return InvalidBillingEvent(
        "payment_id_conflict",
        f"{row.kind} payment_id {preview(row.payment_id)} is stored already for {stored_as}: a payment_id counts once",
    )


def _now() -> datetime:
    return datetime.now(UTC)
