"""``bastionary demo``: the embedded stack, a realistic workload, and a readable summary.

It runs the same processes an operator would (the embedded broker, a ``bastionary worker``
holding chdb and serving the query gateway), publishes a workload with duplicates, bad
records and late events, waits until every record has landed, and then checks the
ClickHouse totals against the workload's own ground truth. Then it follows the billing: the
first invoices, the dunning of the customers who do not pay (see :mod:`bastionary.tools.demo.billing`)
and a few entitlement checks.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import clickhouse_connect
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bastionary.catalog import load_catalog
from bastionary.devstack.broker import EmbeddedBroker
from bastionary.devstack.discovery import GatewayInfo, gateway_dsn, gateway_file, read_gateway_file
from bastionary.devstack.processes import PREEXEC, stop_process
from bastionary.kafka import committed_offsets, ensure_topics, publish_records
from bastionary.money import round_money
from bastionary.settings import Settings
from bastionary.storage import diagnostics
from bastionary.storage.client import Client
from bastionary.tools.demo.billing import (
    Collections,
    DunningPeers,
    billing_email,
    exhaust_entitlement,
    follow_dunning,
    show_entitlements,
    suspension_checks,
)
from bastionary.tools.workload import Event, GroupKey, Record, Workload, generate
from bastionary.topics import Topics

DEMO_CATALOG = Path(__file__).with_name("demo_catalog.yaml")
# (name, country, tax exempt) of each subscriber's customer record: VAT applies in Germany
# (demo_catalog.yaml, invoicing), except to cust-0006 (a reverse-charge business).
CUSTOMER_RECORDS = {
    "cust-0001": ("Northwind Traders Inc.", "US", False),
    "cust-0002": ("Blue Harbor LLC", "US", False),
    "cust-0003": ("Contoso Labs Ltd", "GB", False),
    "cust-0004": ("Fabrikam Robotics", "US", False),
    "cust-0005": ("Müller & Söhne GmbH", "DE", False),
    "cust-0006": ("Rheinwerk Analytics AG", "DE", True),
}
CREDITED = "cust-0005"  # gets a credit note on its first invoice
SUBSCRIBE_BY_SECOND = 40  # of a minute: see _early_in_a_minute
SUBSCRIBERS = [  # (customer, plan, credit grant or None)
    ("cust-0001", "starter", None),
    ("cust-0002", "starter", ("USD", "10.00")),
    ("cust-0003", "pro", None),
    ("cust-0004", "pro", ("USD", "25.00")),
    ("cust-0005", "enterprise", ("EUR", "100.00")),
    ("cust-0006", "enterprise", None),
]


@dataclass
class DemoOptions:
    events: int = 50_000
    customers: int = 300
    late_events: int = 300
    billing: bool = True


def run_demo(settings: Settings, options: DemoOptions, console: Console | None = None) -> bool:
    """True when the ClickHouse totals equal the ground truth exactly and, with billing, when
    dunning and entitlements did what the demo expects of them."""
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    demo_dir = settings.data_path / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    topics = Topics(settings.topic_prefix)
    console.rule("[bold]Bastionary demo: usage metering on the embedded stack")
    with EmbeddedBroker(demo_dir) as broker, DunningPeers(demo_dir) as peers:
        asyncio.run(ensure_topics(broker.bootstrap, [topics.usage_events, topics.usage_dlq], settings.usage_partitions))
        console.print(f"Kafka-protocol broker (Tansu) on {broker.bootstrap}")
        console.print(
            f"dunning peers in this process: SMTP sink on {peers.smtp.host}:{peers.smtp.port}, "
            f"webhook receiver at {peers.hooks.url}"
        )
        worker = _start_worker(settings, demo_dir, broker.bootstrap, peers.worker_env())
        try:
            client, gateway = _wait_for_gateway(demo_dir, worker, console)
            console.print(f"worker API and Prometheus metrics at http://127.0.0.1:{peers.web_port}/metrics")
            workload = generate(
                options.events,
                customers=options.customers,
                duplicate_rate=0.10,
                late_events=options.late_events,
                bad_records=7,
            )
            subscribed, billable, start = _start_billing(console, broker.bootstrap, topics)
            workload.unique_events.extend(billable)  # the ground truth covers them too
            # The customers' side (paying invoices) runs from now on, alongside the workload.
            payer = _client(gateway)
            with Collections(payer, broker.bootstrap, topics, start, peers) as collections:
                ends = _publish(console, broker.bootstrap, topics.usage_events, workload.records)
                _wait_until_landed(console, broker.bootstrap, settings.consumer_group, topics.usage_events, ends)
                exact = _summarize(console, client, workload, billable_events=len(billable))
                if not options.billing:
                    return exact
                _show_invoices(console, client, subscribed)
                _show_invoice_and_credit_note(console, client, broker.bootstrap, topics, demo_dir)
                followed = _follow_billing(console, client, peers, collections, broker.bootstrap, topics)
            return exact and followed
        finally:
            stop_process(worker, 20)


def _follow_billing(
    console: Console, client: Client, peers: DunningPeers, collections: Collections, bootstrap: str, topics: Topics
) -> bool:
    """A metered limit spent, the dunning walk, then what the suspension did to entitlements."""
    problems: list[str] = []
    console.rule("[bold]Entitlements and dunning")
    checks = exhaust_entitlement(console, peers, bootstrap, topics, problems)
    policy = load_catalog(DEMO_CATALOG).dunning.policy_for("pro")
    if policy is None:
        raise RuntimeError(f"{DEMO_CATALOG.name} has no dunning policy for plan 'pro'")
    follow_dunning(console, client, peers, collections, policy, problems)
    checks += suspension_checks(console, peers, problems)
    show_entitlements(console, checks)
    for problem in problems:
        console.print(f"[red]FAILED: {problem}")
    if not problems:
        console.print(
            "[green]dunning and entitlements as expected: every step reached the non-payers, "
            "none reached the late payer after it paid"
        )
    return not problems


def _start_worker(
    settings: Settings, demo_dir: Path, bootstrap: str, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = (
        os.environ
        | {
            "BASTIONARY_KAFKA_BOOTSTRAP": bootstrap,
            "BASTIONARY_DATA_DIR": str(demo_dir),
            "BASTIONARY_WORKER_ID": "demo-worker",
            "BASTIONARY_KAFKA_SESSION_TIMEOUT": "PT3S",
            "BASTIONARY_LOG_FORMAT": "json",
            "BASTIONARY_CATALOG": str(DEMO_CATALOG),
            "BASTIONARY_RATING_GRACE": "PT0S",
            "BASTIONARY_RATING_INTERVAL": "PT2S",
        }
        | extra_env
    )
    env.pop("BASTIONARY_CLICKHOUSE_DSN", None)
    log = (demo_dir / "worker.log").open("ab")
    command = [str(Path(sys.executable).parent / "bastionary"), "worker"]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=PREEXEC)


def _wait_for_gateway(
    demo_dir: Path, worker: subprocess.Popen[bytes], console: Console, timeout: float = 90.0
) -> tuple[Client, GatewayInfo]:
    path = gateway_file(demo_dir)
    deadline = time.monotonic() + timeout
    with console.status("starting the worker (ClickHouse in-process, Faust consumer group)..."):
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}; see {demo_dir / 'worker.log'}")
            info = read_gateway_file(path)
            if info:
                console.print(f"worker ready; ClickHouse queryable at http://{info['host']}:{info['port']}")
                return _client(info), info
            time.sleep(0.2)
    raise TimeoutError(f"worker not ready after {timeout}s; see {demo_dir / 'worker.log'}")


def _client(gateway: GatewayInfo, role: Literal["reader", "writer"] = "reader") -> Client:
    """A client of the worker's query gateway: read-only unless asked for the writer."""
    return clickhouse_connect.get_client(dsn=gateway_dsn(gateway, role), compress=False)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _publish(console: Console, bootstrap: str, topic: str, records: Sequence[Record]) -> dict[int, int]:
    with _progress(console) as progress:
        task = progress.add_task("publishing usage records", total=len(records))
        return asyncio.run(publish_records(bootstrap, topic, records, lambda n: progress.advance(task, n)))


def _wait_until_landed(
    console: Console, bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout: float = 600.0
) -> None:
    total = sum(ends.values())
    with _progress(console) as progress:
        task = progress.add_task("landing in ClickHouse  ", total=total)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = asyncio.run(committed_offsets(bootstrap, group, topic))
            done = sum(min(committed.get(p, 0), end) for p, end in ends.items())
            progress.update(task, completed=done)
            if done >= total:
                return
            time.sleep(0.5)
    raise TimeoutError("the pipeline did not catch up in time")


def _early_in_a_minute() -> datetime:
    """Now, or the start of the next minute when this one is nearly over.

    The subscriptions start at this minute's start, and the first period ends with the minute.
    A worker that reads a subscription only after that takes its first period for a backfill:
    not rated unless asked, and never dunned. The dunning part needs those first invoices, so
    the worker is given at least 20 s to read them."""
    now = datetime.now(UTC)
    if now.second < SUBSCRIBE_BY_SECOND:
        return now
    time.sleep(60 - now.second - now.microsecond / 1e6 + 0.1)
    return datetime.now(UTC)


def _start_billing(console: Console, bootstrap: str, topics: Topics) -> tuple[list[str], list[Event], datetime]:
    """Subscriptions starting this minute (1-minute periods), a few credit grants, and usage."""
    from bastionary.kafka import UsageProducer

    now = _early_in_a_minute()
    start = now.replace(second=0, microsecond=0)
    subscriptions: list[Event] = []
    customers: list[Event] = []
    grants: list[Event] = []
    usage: list[Event] = []
    for n, (customer, plan, grant) in enumerate(SUBSCRIBERS):
        data = {
            "subscription_id": f"sub-{customer}",
            "customer_id": customer,
            "plan": plan,
            "start": start.isoformat(),
            "billing_email": billing_email(customer),
        }
        subscriptions.append(_event("bastionary.subscription.created.v1", f"sub-{customer}", customer, now, data))
        name, country, exempt = CUSTOMER_RECORDS[customer]
        record = {"customer_id": customer, "name": name, "email": billing_email(customer), "tax_exempt": exempt,
                  "address": {"line1": f"{n + 1} Market Street", "city": "Springfield", "country": country}}  # fmt: skip
        customers.append(_event("bastionary.customer.upserted.v1", f"customer-{customer}", customer, now, record))
        if grant:
            currency, amount = grant
            grant_data = {
                "grant_id": f"grant-{customer}",
                "customer_id": customer,
                "amount": amount,
                "currency": currency,
                "priority": 1,
                "effective_at": start.isoformat(),
            }
            grants.append(_event("bastionary.credit.granted.v1", f"grant-{customer}", customer, now, grant_data))
        for i in range(40 * (n + 1)):
            usage.append(
                _event(
                    "llm.completion",
                    f"bill-{customer}-t{i}",
                    customer,
                    now,
                    {"tokens": 900 + 37 * i, "model": "gpt-4" if i % 3 else "gpt-4o-mini"},
                )
            )
            usage.append(_event("api.request", f"bill-{customer}-a{i}", customer, now, {"method": "GET"}))
        usage.append(_event("user.active", f"bill-{customer}-u", customer, now, {"user_id": f"{customer}-admin"}))
        usage.append(_event("storage.sampled", f"bill-{customer}-s", customer, now, {"gb": 120.5 + n}))
        usage.append(_event("seats.updated", f"bill-{customer}-seats", customer, now, {"seats": 3 + n}))

    async def send() -> None:
        async with UsageProducer(bootstrap) as producer:
            for topic, payloads in (
                (topics.customers, customers),
                (topics.subscriptions, subscriptions),
                (topics.credit_grants, grants),
                (topics.usage_events, usage),
            ):
                for payload in payloads:
                    await producer.send(topic, payload)
            await producer.flush()

    asyncio.run(send())
    console.print(
        f"{len(subscriptions)} subscriptions on 1-minute periods from {start:%H:%M} UTC, "
        f"{len(grants)} credit grants, {len(usage)} billable usage events"
    )
    return [f"sub-{customer}" for customer, _, _ in SUBSCRIBERS], usage, start


def _event(event_type: str, event_id: str, subject: str, when: datetime, data: dict[str, Any]) -> Event:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "bastionary-demo",
        "type": event_type,
        "subject": subject,
        "time": when.isoformat(),
        "data": data,
    }


def _show_invoices(console: Console, client: Client, subscriptions: list[str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    rows: list[diagnostics.PeriodInvoice] = []
    with console.status("waiting for the first billing period to close and be rated..."):
        while time.monotonic() < deadline:
            rows = diagnostics.period_invoices(client)
            if {r.subscription_id for r in rows} >= set(subscriptions):
                break
            time.sleep(2)
    table = Table(title="Invoices (first period of each subscription)")
    for column in ("customer", "plan", "lines", "subtotal", "tax", "credits", "total"):
        table.add_column(column, justify="right" if column in ("subtotal", "tax", "credits", "total") else "left")
    seen: set[str] = set()
    for sub, customer, plan, currency, subtotal, credits, total, document in rows:
        if sub in seen:
            continue
        seen.add(sub)
        data = orjson.loads(document)
        table.add_row(
            customer,
            plan,
            str(len(data["lines"])),
            f"{subtotal:.2f} {currency}",
            data.get("tax", "0"),
            f"{credits:.2f}",
            f"{total:.2f} {currency}",
        )
    console.print(table)
    if rows:
        sample = orjson.loads(rows[-1].document)
        detail = Table(title=f"Invoice {sample['invoice_id']} ({sample['customer_id']}, {sample['plan']})")
        for column in ("line", "quantity", "amount"):
            detail.add_column(column, justify="left" if column == "line" else "right")
        for line in sample["lines"]:
            detail.add_row(line["description"], line["quantity"], f"{line['amount']} {sample['currency']}")
        detail.add_row("subtotal", "", f"{sample['subtotal']}")
        for tax in sample.get("tax_lines", []):
            detail.add_row(tax["name"], "", tax["amount"])
        if Decimal(sample["credits_applied"]) > 0:
            detail.add_row("credits applied", "", f"-{sample['credits_applied']}")
        detail.add_row("total due " + sample["due_at"][:10], "", f"{sample['total']} {sample['currency']}")
        console.print(detail)
    missing = set(subscriptions) - seen
    if missing:
        console.print(f"[yellow]not rated yet: {', '.join(sorted(missing))}")


def _show_invoice_and_credit_note(
    console: Console, client: Client, bootstrap: str, topics: Topics, demo_dir: Path, timeout: float = 90.0
) -> None:
    """The VAT invoice of a German customer as a PDF, then a credit note on it."""
    from bastionary.kafka import UsageProducer
    from bastionary.rating.credit_notes import credit_note_id
    from bastionary.rating.render import credit_note_view, render_html, render_invoice_pdf, render_pdf_view
    from bastionary.storage.credit_notes import ClickHouseCreditNoteStore
    from bastionary.storage.reports import InvoiceReports

    reports = InvoiceReports(client)
    invoice = next((r for r in reports.invoices(CREDITED) if r[4] == "period"), None)
    document = reports.document(invoice[0]) if invoice is not None else None
    if document is None:
        console.print(f"[yellow]{CREDITED} has no invoice yet: no credit note shown")
        return
    pdf, html = demo_dir / "invoice.pdf", demo_dir / "invoice.html"
    pdf.write_bytes(render_invoice_pdf(document))
    html.write_text(render_html(document))
    console.print(f"{invoice_summary(CREDITED, document)}\n  written to {pdf} and {html}")
    amount = service_credit_amount(document["subtotal"], document["currency"])
    request = {"credit_note_id": "demo-credit-1", "invoice_id": document["invoice_id"], "customer_id": CREDITED,
               "amount": amount, "reason": "Service credit: 10% for the API latency incident"}  # fmt: skip
    event = _event("bastionary.credit_note.requested.v1", "demo-credit-1", CREDITED, datetime.now(UTC), request)

    async def send() -> None:
        async with UsageProducer(bootstrap) as producer:
            await producer.send(topics.credit_notes, event)
            await producer.flush()

    asyncio.run(send())
    notes = ClickHouseCreditNoteStore(client)
    note_id = credit_note_id(CREDITED, "demo-credit-1")
    deadline = time.monotonic() + timeout
    decided = None
    with console.status("waiting for the credit note to be decided..."):
        while decided is None and time.monotonic() < deadline:
            decided = notes.document(note_id)
            time.sleep(1)
    if decided is None:
        console.print("[yellow]the credit note was not decided in time")
        return
    if decided["status"] != "issued":
        console.print(f"[yellow]credit note rejected: {decided.get('rejection')}")
        return
    note_pdf = demo_dir / "credit-note.pdf"
    note_pdf.write_bytes(render_pdf_view(credit_note_view(decided, document)))
    console.print(
        f"Credit note {note_id}: {decided['amount']} {decided['currency']} ({decided['reason']});"
        f" off the amount due {decided['reduces_amount_due']}, to the balance {decided['credited_to_balance']},"
        f" refunded {decided['refunded']}\n  written to {note_pdf}"
    )


def invoice_summary(customer: str, document: dict[str, Any]) -> str:
    """One line on an invoice whose figures add up as printed: subtotal + tax - credits = total."""
    currency = document["currency"]
    taxes = ", ".join(f"{t['name']} {t['amount']} {currency}" for t in document["tax_lines"]) or "none"
    # Without the credits, a credited invoice's total reads as a sum that does not add up.
    credits = f", credits -{document['credits_applied']}" if Decimal(document["credits_applied"]) > 0 else ""
    return (
        f"Invoice {document['invoice_id']} of {customer} ({document['bill_to'].get('name', '')}):"
        f" subtotal {document['subtotal']}, tax {taxes}{credits}, total {document['total']} {currency}"
    )


def service_credit_amount(subtotal: str, currency: str) -> str:
    """The demo's 10% service credit, rounded as every amount is (half up, bastionary.money)."""
    return str(round_money(Decimal(subtotal) / 10, currency))


def _summarize(console: Console, client: Client, workload: Workload, billable_events: int = 0) -> bool:
    """``billable_events``: the subscribers' usage, published one event per record beside the
    workload's records; their events are already among ``workload.unique_events``."""
    accepted, duplicates, dead = diagnostics.ingest_totals(client)
    events_in = sum(r.events for r in workload.records) + billable_events
    table = Table(title="Pipeline", show_header=False)
    table.add_row("records published", f"{len(workload.records) + billable_events:,}")
    table.add_row("events in (incl. repeats)", f"{events_in:,}")
    table.add_row("events counted", f"{int(accepted):,}")
    table.add_row("duplicates dropped", f"{int(duplicates):,}")
    table.add_row("dead-lettered (usage.dlq)", f"{int(dead):,}")
    table.add_row("late events (hours to days old)", f"{workload.late_events:,}")
    console.print(table)

    truth = workload.truth()
    exact = True
    top = Table(title="Top customers per meter (all time)")
    for column in ("meter", "aggregation", "#1", "#2", "#3"):
        top.add_column(column)
    for meter in load_catalog(None).meters:
        totals = {t.customer_id: t.value for t in diagnostics.meter_totals(client, meter)}
        leaders = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:3]
        top.add_row(meter.key, meter.aggregation.value, *(f"{c}: {v.normalize():f}" for c, v in leaders))
        grouped: dict[GroupKey, Decimal] = {
            (t.customer_id, tuple(sorted(t.group.items()))): t.value
            for t in diagnostics.meter_totals(client, meter, list(meter.group_by))
        }
        exact = exact and grouped == truth[meter.key]
    console.print(top)
    verdict = "[green]exact: every meter total equals the ground truth" if exact else "[red]MISMATCH with ground truth"
    console.print(verdict)
    # Equal totals do not show that a bad record reached usage.dlq rather than vanishing, nor
    # that the counters a dashboard plots agree with what was sent.
    expected = {
        "events counted": (accepted, len(workload.unique_events)),
        "duplicates dropped": (duplicates, workload.duplicates),
        "dead-lettered (usage.dlq)": (dead, workload.bad_records),
    }
    miscounted = [f"{name} {got:,}, expected {want:,}" for name, (got, want) in expected.items() if got != want]
    for line in miscounted:
        console.print(f"[red]MISMATCH: {line}")
    return exact and not miscounted
