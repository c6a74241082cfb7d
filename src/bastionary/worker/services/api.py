"""What the HTTP API reads and publishes through: the usage and billing topics (one path and
one validation with Kafka producers), and ClickHouse for reads, answered by any worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bastionary.catalog import Catalog
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.posted import PostedEvents, judge_posted
from bastionary.metering.readings import MeterIndex
from bastionary.rating.rater import Rater, upcoming_invoices
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import Client
from bastionary.storage.idempotency import ClickHouseIdempotency
from bastionary.worker.context import WorkerContext


class ApiBackend:
    def __init__(
        self,
        ctx: WorkerContext,
        catalog: Catalog,
        reader_factory: Callable[[], Client],
        writer_factory: Callable[[], Client],
    ):
        self.ctx = ctx
        self.catalog = catalog
        settings = ctx.settings
        self.limits = RecordLimits(settings.max_record_bytes, settings.max_batch_events, settings.max_future_skew)
        self.meters = MeterIndex(catalog.meters)
        self.plans = {plan.key: plan for plan in catalog.plans}
        self._reader_factory = reader_factory
        self._reader: Client | None = None
        self._writer_factory = writer_factory
        self._idempotency: ClickHouseIdempotency | None = None

    @property
    def reader(self) -> Client:
        """Opened at first use (a worker that serves no read never connects a reader)."""
        if self._reader is None:
            self._reader = self._reader_factory()
        return self._reader

    @property
    def idempotency(self) -> ClickHouseIdempotency:
        if self._idempotency is None:
            self._idempotency = ClickHouseIdempotency(self._writer_factory())
        return self._idempotency

    def billing_reads(self) -> ClickHouseBillingStore:
        return ClickHouseBillingStore(self.reader)

    # -- publishing ----------------------------------------------------------------------

    async def post_usage(self, body: bytes, batch: bool | None, customer: str | None) -> PostedEvents:
        """Judge the posted events and publish what passes; returns once the broker has
        acknowledged every record (a failed send raises: nothing is reported as accepted)."""
        posted = judge_posted(body, batch, int(time.time() * 1000), self.limits, self.meters, customer)
        topic = self.ctx.topic(self.ctx.topics.usage_events)
        pending = [await topic.send(key=key, value=value) for key, value in posted.records]
        await asyncio.gather(*pending)
        return posted

    async def publish(self, topic_name: str, key: str, value: bytes) -> None:
        await (await self.ctx.topic(topic_name).send(key=key.encode(), value=value))

    # -- the upcoming invoice ------------------------------------------------------------

    def upcoming_invoices(self, customer_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Each of the customer's subscriptions' next invoice, rated now (blocking: run it in a
        thread). The same pricing code as the rater; see :meth:`Rater.preview`."""
        rater = Rater(
            self.billing_reads(),
            self.catalog.plans,
            self.catalog.meters,
            self.ctx.settings.rating_grace,
            _never_publish,
            invoicing=self.catalog.invoicing,
            backfill=self.ctx.settings.rating_backfill,
        )
        return upcoming_invoices(self.billing_reads(), rater, customer_id, now or datetime.now(UTC))


async def _never_publish(role: str, key: str, value: bytes) -> Any:
    raise RuntimeError("a preview publishes nothing")
