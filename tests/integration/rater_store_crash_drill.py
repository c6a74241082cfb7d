"""Run in a child process (chdb admits one data path per process) by test_rater_store_crash.py.

The real ``ClickHouseBillingStore`` on freshly migrated chdb tables, one database per scenario,
each seeded alike: cust-1 on a plan of a 20.00 fee plus 0.01 per token from January 1st, with
January usage partly ingested after January's cutoff (adjusted on February), February usage,
and three grants (one applied on both months, one expiring in January, one in EUR expiring in
February). January and February are rated in one run and one batch.

Scenarios: ``control`` (no failure); ``crash_before_invoices`` and ``crash_before_ledger``
(the insert into ``invoices`` / ``credit_ledger`` fails, then a fresh rater runs again);
``changed_after_crash`` (the invoices insert fails, a higher-priority grant arrives, a fresh
rater runs) against ``changed_control`` (that grant there from the start); and
``fewer_lines`` (``store_invoices`` called directly: an interrupted store of an invoice with
three lines, then the same invoice with two). Prints one JSON object: each scenario's state.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bastionary.credits.ledger import Grant
from bastionary.metering.meters import Aggregation, Meter
from bastionary.metering.ports import RollupRow
from bastionary.rating.invoice import Invoice, Line, invoice_id
from bastionary.rating.plans import Plan
from bastionary.rating.ports import RatedInvoice
from bastionary.rating.rater import Rater
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import Client, open_client
from bastionary.storage.diagnostics import seed_rating_inputs
from bastionary.storage.usage import ClickHouseUsageStore

D = Decimal
JAN, FEB, MAR = (datetime(2024, month, 1, tzinfo=UTC) for month in (1, 2, 3))
GRACE = timedelta(hours=1)
AFTER_FEB = MAR + timedelta(hours=2)
RECEIVED = datetime(2023, 12, 1, tzinfo=UTC)
TOKENS = Meter(key="llm_tokens", event_type="llm.completion", aggregation=Aggregation.SUM, value_property="$.tokens")
PRO = Plan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "billing_interval": "P1M",
        "payment_terms": "P14D",
        "prices": [
            {"key": "base", "model": "flat", "amount": 20, "description": "Platform fee"},
            {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"},
        ],
    }
)


class Crash(Exception):
    pass


class FailingClient:
    """The client, but inserting into ``table`` fails (once): a crash right before that write."""

    def __init__(self, client: Client, table: str) -> None:
        self._client, self._table = client, table

    def insert(self, table: str, *args: Any, **kwargs: Any) -> Any:
        if table == self._table:
            self._table = ""
            raise Crash(f"killed before writing {table}")
        return self._client.insert(table, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def grant_row(grant_id: str, amount: str, currency: str = "USD", priority: int = 1, expires: Any = None) -> LedgerRow:
    return LedgerRow(
        f"granted-{grant_id}", "granted", grant_id, "cust-1", D(amount), currency, priority, JAN, expires, "", RECEIVED
    )


def usage(tokens: int, time: datetime, ingested: datetime) -> RollupRow:
    zero = (datetime(1970, 1, 1, tzinfo=UTC), D(0))
    return RollupRow("llm_tokens", "cust-1", "", {}, time, ingested, D(tokens), 1, None, [], zero)


def seeded(workdir: Path, database: str) -> Client:
    client = open_client(f"chdb://{workdir / 'clickhouse'}", database, create=True)
    ClickHouseUsageStore(client).migrate()
    subscription = SubscriptionRow("create-1", "created", "sub-1", "cust-1", "pro", JAN, None, JAN, RECEIVED, "")
    rollups = [
        usage(1000, datetime(2024, 1, 15, tzinfo=UTC), datetime(2024, 1, 15, tzinfo=UTC)),
        usage(300, datetime(2024, 1, 31, 23, 59, tzinfo=UTC), FEB + GRACE),  # after January's cutoff
        usage(800, datetime(2024, 2, 12, tzinfo=UTC), datetime(2024, 2, 12, tzinfo=UTC)),
    ]
    ledger = [
        grant_row("g-promo", "40.00"),
        grant_row("g-trial", "5.00", expires=datetime(2024, 1, 20, tzinfo=UTC)),
        grant_row("g-eur", "8.00", currency="EUR", expires=datetime(2024, 2, 20, tzinfo=UTC)),
    ]
    seed_rating_inputs(client, [subscription], rollups, ledger)
    return client


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, role: str, key: str, value: bytes) -> Any:
        self.events.append({"role": role, "key": key, "event": json.loads(value)})
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def rate(client: Client, publish: Recorder) -> list[dict[str, Any]]:
    rater = Rater(ClickHouseBillingStore(client), [PRO], [TOKENS], GRACE, publish)
    return (await rater.run_once(AFTER_FEB)).invoices


def money(value: Any) -> str:
    return format(D(value).normalize(), "f")


def state(client: Client) -> dict[str, Any]:
    """What the tables say, without ``recorded_at`` (the time of the write)."""
    store = ClickHouseBillingStore(client)
    grants, drawn = store.grants()
    return {
        "invoices": [
            json.loads(document)
            for (document,) in client.query("SELECT document FROM invoices FINAL ORDER BY period_start").result_rows
        ],
        "published": [
            int(p) for (p,) in client.query("SELECT published FROM invoices FINAL ORDER BY period_start").result_rows
        ],
        "movements": [
            [movement, kind, grant, money(amount), currency, invoice]
            for movement, kind, grant, amount, currency, invoice in client.query(
                "SELECT movement_id, kind, grant_id, amount, currency, invoice_id FROM credit_ledger FINAL"
                " WHERE kind IN ('applied', 'expired') ORDER BY movement_id"
            ).result_rows
        ],
        "lines": [
            [invoice, int(n), key, money(quantity), money(amount), str(start), events]
            for invoice, n, key, quantity, amount, start, events in client.query(
                "SELECT invoice_id, line_no, line_key, quantity, amount, period_start, events FROM invoice_lines FINAL"
                " ORDER BY invoice_id, line_no"
            ).result_rows
        ],
        "drawn": {grant: money(amount) for grant, amount in sorted(drawn.items())},
        "drawn_as_of_later": {
            grant: money(amount)
            for grant, amount in sorted(store.grants_as_of(AFTER_FEB + timedelta(days=99))[1].items())
        },
        "grants": sorted(g.grant_id for g in grants.get("cust-1", [])),
        "billed": sorted(
            [
                str(start),
                key,
                money(quantity),
                money(amount),
                events,
                None if spans is None else [str(w) for w in spans],
            ]
            for (start, key), (quantity, amount, events, spans) in store.billed("sub-1").items()
        ),
    }


async def crashed(workdir: Path, database: str, table: str, before_rerun: Any = None) -> dict[str, Any]:
    client = seeded(workdir, database)
    publish = Recorder()
    try:
        await rate(FailingClient(client, table), publish)
        raise AssertionError("the injected failure did not happen")
    except Crash:
        pass
    after_crash = state(client)
    orphans = client.query("SELECT count() FROM credit_ledger FINAL WHERE kind IN ('applied', 'expired')").result_rows[
        0
    ][0]
    published_before_rerun = len(publish.events)
    if before_rerun is not None:
        before_rerun(client)
    invoices = await rate(client, publish)
    return {
        "after_crash": after_crash,
        "orphan_movements_after_crash": int(orphans),
        "published_before_rerun": published_before_rerun,
        "rerun_invoices": invoices,
        "events": publish.events,
        "final": state(client),
    }


def add_first_grant(client: Client) -> None:
    ClickHouseBillingStore(client).insert_ledger([grant_row("g-first", "30.00", priority=0)])


def fewer_lines(workdir: Path) -> dict[str, Any]:
    """An interrupted store of an invoice with three lines, then the same invoice with two: the
    third line row is zeroed, so the stored lines add up to the document."""
    client = seeded(workdir, "fewer_lines")
    invoice = invoice_id("sub-1", JAN)
    lines = [
        Line("base", None, "Platform fee", D(1), D(20), line_key="pro:base"),
        Line("tokens", "llm_tokens", "tokens", D(1000), D(10), line_key="pro:tokens"),
        Line("tokens", "llm_tokens", "tokens (2)", D(50), D("0.5"), line_key="pro:tokens"),
    ]
    promo = Grant("g-promo", "cust-1", D("40.00"), "USD", 1, JAN)

    def rated(count: int, applied: str) -> RatedInvoice:
        subtotal = sum((line.amount for line in lines[:count]), D(0))
        document = Invoice(
            invoice, "cust-1", "sub-1", "pro", "USD", "period", JAN.isoformat(), FEB.isoformat(),
            (FEB + GRACE).isoformat(), (FEB + GRACE + timedelta(days=14)).isoformat(),
            tuple(line.as_dict("USD") for line in lines[:count]), f"{subtotal:.2f}", applied,
            ({"grant_id": "g-promo", "amount": applied},), f"{subtotal - D(applied):.2f}", "finalized",
        )  # fmt: skip
        movement = LedgerRow(
            "applied-promo", "applied", "g-promo", "cust-1", D(applied), "USD", 1, promo.effective_at, None, invoice,
            datetime.now(UTC),
        )  # fmt: skip
        return RatedInvoice(document, FEB + GRACE, lines[:count], [movement])

    try:
        ClickHouseBillingStore(FailingClient(client, "invoices")).store_invoices([rated(3, "30.50")])
        raise AssertionError("the injected failure did not happen")
    except Crash:
        pass
    after_crash = state(client)
    ClickHouseBillingStore(client).store_invoices([rated(2, "30.00")])
    totals = client.query(
        "SELECT count(), sum(amount) FROM invoice_lines FINAL WHERE invoice_id = {i:String}", parameters={"i": invoice}
    ).result_rows[0]
    return {
        "after_crash": after_crash,
        "final": state(client),
        "line_rows": int(totals[0]),
        "line_sum": money(totals[1]),
    }


async def main(workdir: Path) -> dict[str, Any]:
    control_publish = Recorder()
    control = seeded(workdir, "control")
    control_invoices = await rate(control, control_publish)
    changed_control = seeded(workdir, "changed_control")
    add_first_grant(changed_control)
    changed_publish = Recorder()
    changed_control_invoices = await rate(changed_control, changed_publish)
    return {
        "control": {"invoices": control_invoices, "events": control_publish.events, "final": state(control)},
        "changed_control": {
            "invoices": changed_control_invoices,
            "events": changed_publish.events,
            "final": state(changed_control),
        },
        "crash_before_invoices": await crashed(workdir, "crash_before_invoices", "invoices"),
        "crash_before_ledger": await crashed(workdir, "crash_before_ledger", "credit_ledger"),
        "changed_after_crash": await crashed(workdir, "changed_after_crash", "invoices", add_first_grant),
        "fewer_lines": fewer_lines(workdir),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1]))), default=str))
