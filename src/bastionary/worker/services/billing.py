"""The billing service: subscription, credit-grant, customer and credit-note intake, and the
rater and the credit note desk on a timer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from bastionary.catalog import Catalog
from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.credit_notes import parse_credit_note_request
from bastionary.rating.customers import customer_row, parse_customer
from bastionary.rating.events import (
    InvalidBillingEvent,
    credit_row,
    parse_credit,
    parse_subscription,
    subscription_row,
)
from bastionary.rating.rater import Rater
from bastionary.rating.spend_monitor import SpendMonitor
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.credit_notes import ClickHouseCreditNoteStore
from bastionary.storage.spend import ClickHouseSpendStore
from bastionary.worker.context import WorkerContext
from bastionary.worker.intake import consume_intake

log = structlog.get_logger(__name__)


class BillingService:
    def __init__(self, ctx: WorkerContext, catalog: Catalog, store_factory: Callable[[], ClickHouseBillingStore]):
        self.ctx = ctx
        self.catalog = catalog
        self._store_factory = store_factory
        self._store: ClickHouseBillingStore | None = None
        self._rater: Rater | None = None
        self._desk: CreditNoteDesk | None = None
        self._spend: SpendMonitor | None = None
        self._plan_keys = {plan.key for plan in catalog.plans}

    def store(self) -> ClickHouseBillingStore:
        """Opened at first use, when the worker starts."""
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def owns(self, customer_id: str) -> bool:
        """The rater rates (and dunning decides for) the customers whose subscriptions partition
        this worker owns, so one customer is never handled by two workers at once."""
        return self.ctx.owns(customer_id, self.ctx.topics.subscriptions)

    def install(self) -> None:
        app, topics = self.ctx.app, self.ctx.topics
        app.agent(self.ctx.topic(topics.subscriptions), name="billing-subscriptions")(self._subscription_intake)
        app.agent(self.ctx.topic(topics.credit_grants), name="billing-credit-grants")(self._credit_intake)
        app.agent(self.ctx.topic(topics.customers), name="billing-customers")(self._customer_intake)
        app.agent(self.ctx.topic(topics.credit_notes), name="billing-credit-notes")(self._credit_note_intake)
        if self.ctx.settings.rating_enabled:
            app.timer(interval=self.ctx.settings.rating_interval.total_seconds())(self._rate_closed_periods)

    async def _intake(self, stream: Any, handle: Callable[[Any], Any]) -> None:
        await consume_intake(
            self.ctx.app,
            stream,
            dead_letter=self.ctx.dead_letter,
            dlq_topic=self.ctx.topics.billing_dlq,
            invalid=InvalidBillingEvent,
            handle=handle,
            prepare=self.store,
        )

    async def _subscription_intake(self, stream: Any) -> None:
        await self._intake(stream, self._store_subscription)

    async def _credit_intake(self, stream: Any) -> None:
        await self._intake(stream, self._store_credit)

    async def _customer_intake(self, stream: Any) -> None:
        await self._intake(stream, self._store_customer)

    async def _credit_note_intake(self, stream: Any) -> None:
        await self._intake(stream, self._store_credit_note_request)

    async def _store_credit_note_request(self, message: Any) -> None:
        # Checked against the invoice later, by the desk of the worker rating the customer.
        envelope, request = parse_credit_note_request(message.value or b"", latest_time=self.ctx.latest_time(message))
        store = ClickHouseCreditNoteStore(self.store().client)
        await asyncio.to_thread(store.insert_request, envelope, request)

    async def _store_customer(self, message: Any) -> None:
        envelope, data = parse_customer(message.value or b"", latest_time=self.ctx.latest_time(message))
        row = customer_row(envelope, data, datetime.now(UTC))
        await asyncio.to_thread(self.store().insert_customers, [row])

    async def _store_subscription(self, message: Any) -> None:
        envelope, kind, data = parse_subscription(
            message.value or b"", self._plan_keys, latest_time=self.ctx.latest_time(message)
        )
        row = subscription_row(envelope, kind, data, datetime.now(UTC))
        await asyncio.to_thread(self.store().insert_subscription_events, [row])

    async def _store_credit(self, message: Any) -> None:
        envelope, kind, data = parse_credit(message.value or b"", latest_time=self.ctx.latest_time(message))
        row = credit_row(envelope, kind, data, datetime.now(UTC))
        await asyncio.to_thread(self.store().insert_ledger, [row])

    async def _publish(self, role: str, key: str, value: bytes) -> Any:
        topic = self.ctx.topics.invoices if role == "invoices" else self.ctx.topics.credits
        return await self.ctx.topic(topic).send(key=key.encode(), value=value)

    async def _rate_closed_periods(self) -> None:
        if self._rater is None:
            self._rater = Rater(
                self.store(),
                self.catalog.plans,
                self.catalog.meters,
                self.ctx.settings.rating_grace,
                self._publish,
                self.owns,
                invoicing=self.catalog.invoicing,
            )
        if self._desk is None:
            notes = ClickHouseCreditNoteStore(self.store().client)
            self._desk = CreditNoteDesk(notes, self.store().insert_ledger, self._publish, self.owns)
        if self._spend is None:
            spend = ClickHouseSpendStore(self.store().client)
            self._spend = SpendMonitor(self.store(), spend, self._rater, self._publish, self.owns)
        try:
            result = await self._rater.run_once()
        except Exception:
            log.exception("rating run failed; retried on the next tick")
            return
        if result.invoices or result.republished:
            log.info("rating run", invoices=len(result.invoices), republished=result.republished)
        try:  # after rating: a note may credit an invoice this run issued
            await self._desk.run_once()
        except Exception:
            log.exception("credit note run failed; retried on the next tick")
        try:  # after both: the exposure counts what they issued
            await self._spend.run_once()
        except Exception:
            log.exception("credit limit run failed; retried on the next tick")
