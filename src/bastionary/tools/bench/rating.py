"""``bastionary bench --rating``: rate N subscriptions x 5 metered prices in one period.

Setup (not timed): a fresh in-process chdb with the subscriptions, one rollup row per
customer and meter in a closed monthly period, customer records (half of them in Germany,
taxed 19% VAT unless exempt, with auto top-up rules), promotional grants for a quarter of
the customers and paid credit for another quarter, and the embedded broker. Timed: one
``Rater.run_once``: reading subscriptions, usage, credits and customer records, pricing,
tax, credits, storing invoices, lines and credit movements, publishing every invoice (and
credit and top-up event) to Kafka with delivery confirmed, and marking them published.

Then, for credit limits: the running charge of 200 customers (``upcoming_invoices``, what
``GET /v1/customers/{id}/upcoming-invoice`` answers), one at a time, timed per customer.
"""

from __future__ import annotations

import asyncio
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bastionary.catalog import parse_catalog
from bastionary.devstack.broker import EmbeddedBroker
from bastionary.kafka import ensure_topics
from bastionary.metering.ports import RollupRow
from bastionary.rating.customers import CustomerRow
from bastionary.rating.rater import Rater, upcoming_invoices
from bastionary.rating.rows import LedgerRow, SubscriptionRow
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import Client, open_client
from bastionary.storage.diagnostics import published_invoices, seed_rating_inputs
from bastionary.storage.usage import ClickHouseUsageStore

METERS = ("tokens", "requests", "storage", "users", "payments")
CATALOG: dict[str, Any] = {
    "meters": [
        {"key": "tokens", "event_type": "t", "aggregation": "SUM", "value_property": "$.v"},
        {"key": "requests", "event_type": "r", "aggregation": "COUNT"},
        {"key": "storage", "event_type": "s", "aggregation": "MAX", "value_property": "$.v"},
        {"key": "users", "event_type": "u", "aggregation": "UNIQUE_COUNT", "value_property": "$.v"},
        {"key": "payments", "event_type": "p", "aggregation": "SUM", "value_property": "$.v"},
    ],
    "plans": [
        {
            "key": "bench",
            "currency": "USD",
            "billing_interval": "P1M",
            "minimum_commitment": "20.00",
            "prices": [
                {"key": "base", "model": "flat", "amount": "29.00"},
                {
                    "key": "tokens",
                    "meter": "tokens",
                    "model": "graduated",
                    "tiers": [{"up_to": 100000, "unit_amount": "0"}, {"up_to": None, "unit_amount": "0.00002"}],
                },
                {
                    "key": "requests",
                    "meter": "requests",
                    "model": "package",
                    "package_size": 1000,
                    "package_amount": "1.50",
                },
                {
                    "key": "storage",
                    "meter": "storage",
                    "model": "volume",
                    "tiers": [{"up_to": 100, "unit_amount": "0.20"}, {"up_to": None, "unit_amount": "0.10"}],
                },
                {"key": "users", "meter": "users", "model": "per_unit", "unit_amount": "4.00"},
                {
                    "key": "payments",
                    "meter": "payments",
                    "model": "percentage",
                    "rate": "0.029",
                    "fixed_amount": "0.30",
                    "max_amount": "500.00",
                },
            ],
        }
    ],
    "invoicing": {
        "issuer": {"name": "Bench GmbH", "address": ["Str. 1", "10117 Berlin"], "tax_id": "DE1"},
        "taxes": [{"key": "de_vat", "name": "VAT 19%", "rate": "0.19", "countries": ["DE"]}],
    },
}
RUNNING_CHARGE_SAMPLE = 200


def run_rating_bench(subscriptions: int = 10_000, keep_dir: Path | None = None) -> dict[str, Any]:
    workdir = keep_dir or Path(tempfile.mkdtemp(prefix="bastionary-rating-bench-"))
    try:
        return asyncio.run(_bench(subscriptions, workdir))
    finally:
        if keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


async def _bench(count: int, workdir: Path) -> dict[str, Any]:
    catalog = parse_catalog(CATALOG)
    client = open_client(f"chdb://{workdir / 'clickhouse'}", "bench", create=True)
    ClickHouseUsageStore(client).migrate()
    now = datetime.now(UTC)
    period_start = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)).replace(day=1)
    _seed(client, count, period_start)
    with EmbeddedBroker(workdir) as broker:
        topics = {"invoices": "billing.invoices", "credits": "billing.credits"}
        await ensure_topics(broker.bootstrap, topics.values(), 4)
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
        )
        await producer.start()
        try:

            async def publish(role: str, key: str, value: bytes) -> Awaitable[Any]:
                delivered: Awaitable[Any] = await producer.send(topics[role], value, key=key.encode())
                return delivered  # resolves to aiokafka's RecordMetadata once the broker acked

            store = ClickHouseBillingStore(client)
            rater = Rater(
                store,
                catalog.plans,
                catalog.meters,
                timedelta(0),
                publish,
                settle=timedelta(0),
                invoicing=catalog.invoicing,
            )
            started = time.perf_counter()
            result = await rater.run_once(now)
            elapsed = time.perf_counter() - started
        finally:
            await producer.stop()
    published = published_invoices(client)
    running = _running_charge(store, rater, count, now)
    taxed = sum(1 for d in result.invoices if d["tax_lines"])
    credited = sum(1 for d in result.invoices if d["credit_allocations"])
    return {
        "subscriptions": count,
        "metered_prices": len(METERS),
        "invoices": len(result.invoices),
        "invoices_with_tax": taxed,
        "invoices_with_credits": credited,
        "topups_requested": sum(1 for d in result.invoices if d["topup_requested"]),
        "invoices_stored_published": published.invoices,
        "seconds": round(elapsed, 2),
        "invoices_per_second": round(len(result.invoices) / elapsed, 1) if elapsed else None,
        "target_seconds": 30,
        "running_charge_ms_per_customer": running,
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
    }


def _running_charge(store: ClickHouseBillingStore, rater: Rater, count: int, now: datetime) -> dict[str, Any]:
    """Milliseconds to price one customer's open period now, as the API does."""
    rng = random.Random(11)
    customers = [f"bench-{rng.randrange(count):06d}" for _ in range(min(RUNNING_CHARGE_SAMPLE, count))]
    took = []
    for customer in customers:
        started = time.perf_counter()
        upcoming_invoices(store, rater, customer, now)
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return {
        "customers": len(took),
        "p50": round(took[len(took) // 2], 1),
        "p99": round(took[min(len(took) - 1, int(len(took) * 0.99))], 1),
        "mean": round(sum(took) / len(took), 1),
    }


def _seed(client: Client, count: int, period_start: datetime) -> None:
    rng = random.Random(5)
    received = datetime.now(UTC)
    subs: list[SubscriptionRow] = []
    rollups: list[RollupRow] = []
    ledger: list[LedgerRow] = []
    customers: list[CustomerRow] = []
    window = period_start + timedelta(days=3)
    for i in range(count):
        customer = f"bench-{i:06d}"
        # Last month's period, loaded now: a deliberate backfill (README, Backfill).
        subs.append(
            SubscriptionRow(
                f"create-{i}",
                "created",
                f"sub-{i}",
                customer,
                "bench",
                period_start,
                None,
                period_start,
                received,
                "",
                1,
            )
        )
        for meter in METERS:
            value = Decimal(rng.randint(0, 300_000))
            rollups.append(
                RollupRow(
                    meter,
                    customer,
                    "",
                    {},
                    window,
                    window,
                    value if meter in ("tokens", "payments") else Decimal(0),
                    rng.randint(1, 5000),
                    value / 1000 if meter == "storage" else None,
                    [f"u{k}" for k in range(rng.randint(0, 20))] if meter == "users" else [],
                    (datetime(1970, 1, 1, tzinfo=UTC), Decimal(0)),
                )
            )
        if i % 4 == 1:  # paid credit, drawn after the promotional grants
            ledger.append(
                LedgerRow(
                    f"pack-{i}", "purchased", f"pack-{i}", customer, Decimal("40.00"), "USD", 1, period_start,
                    None, "", received, Decimal("36.00"), f"pay-{i}",
                )
            )  # fmt: skip
        country, exempt = ("DE", i % 10 == 1) if i % 2 else ("US", False)
        topups = '[{"currency": "USD", "threshold": "30.00", "amount": "100.00"}]' if i % 4 == 1 else "[]"
        address = f'{{"line1": "{i} Main St", "city": "Springfield", "country": "{country}"}}'
        customers.append(
            CustomerRow(
                customer, f"Customer {i}", f"ap@{customer}.example", address, "", exempt, f"c-{i}",
                period_start, received, topups, "",
            )
        )  # fmt: skip
        if i % 4 == 0:
            ledger.append(
                LedgerRow(
                    f"grant-{i}",
                    "granted",
                    f"grant-{i}",
                    customer,
                    Decimal("15.00"),
                    "USD",
                    1,
                    period_start,
                    None,
                    "",
                    received,
                )
            )
    seed_rating_inputs(client, subs, rollups, ledger)
    ClickHouseBillingStore(client).insert_customers(customers)
