"""The billing service: subscription, credit-grant, customer and credit-note intake, and the
rater, the credit note desk and the spend monitor on a timer. The spend monitor also runs
right after a usage flush lands, for the flushed customers (``watch_limits``), and tells
this worker's entitlements at once when a limit is reached or restored, so neither the
rating interval nor the entitlement poll stands between usage and a check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any, get_args

import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from bastionary import metrics
from bastionary.catalog import Catalog
from bastionary.metering.sink import LandedFlush, UsageSink
from bastionary.rating.contracts import InvoiceKind
from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.credit_notes import parse_credit_note_request
from bastionary.rating.customers import customer_row, parse_customer
from bastionary.rating.events import (
    InvalidBillingEvent,
    check_grant_owner,
    check_grant_terms,
    check_owner,
    check_plan_change,
    credit_row,
    parse_credit,
    parse_subscription,
    subscription_row,
)
from bastionary.rating.publishing import PublishRefused
from bastionary.rating.rater import EMPTY, Rater, RatingResult
from bastionary.rating.spend import SpendEvent, SpendEventKind
from bastionary.rating.spend_monitor import SpendMonitor
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.credit_notes import ClickHouseCreditNoteStore
from bastionary.storage.spend import ClickHouseSpendStore
from bastionary.worker.context import WorkerContext
from bastionary.worker.intake import consume_intake, count_dead_letters_from

log = structlog.get_logger(__name__)


def record_invoices(result: RatingResult) -> None:
    """The metrics of a rating run: invoices issued by kind and currency, their totals, and how
    far behind its cutoff the oldest one was rated; each invoice that could not be priced is
    counted and logged with its customer."""
    for failure in result.failed:
        metrics.RATING_FAILED_INVOICES.inc()
        log.error(
            "invoice not rated: its amounts cannot be computed; the customer's invoices wait, retried next run",
            customer_id=failure.customer_id,
            subscription_id=failure.subscription_id,
            kind=failure.kind,
            period_start=failure.period_start.isoformat(),
            error=failure.error,
        )
    for refused in result.refused:
        metrics.RATING_FAILED_INVOICES.inc()
        log.error(
            "invoice stored but not published: the broker refuses it; offered again every run,"
            " while the other invoices are published",
            customer_id=refused.customer_id,
            invoice_id=refused.invoice_id,
            kind=refused.kind,
            period_start=refused.period_start,
            error=refused.error,
        )
    for document in result.invoices:
        if document["status"] == EMPTY:
            continue
        metrics.INVOICES_ISSUED.labels(document["kind"], document["currency"]).inc()
        metrics.INVOICED_AMOUNT.labels(document["currency"]).inc(float(document["total"]))
    # A run with nothing due is not behind: left at the last run's value, the gauge stood
    # high after a backfill until the next invoice fell due, a month later.
    lag = 0.0 if result.oldest_due is None else (datetime.now(UTC) - result.oldest_due).total_seconds()
    metrics.RATING_LAG.set(max(0.0, lag))


# After a flush, wait this long for the flushes of the other partitions before pricing.
LIMIT_DEBOUNCE_SECONDS = 0.05
# What the producer (max request size) or the broker (message.max.bytes) answer for a record
# larger than they take: it will never be taken, however often it is sent.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


def _refused_for_good(exc: BaseException) -> PublishRefused | None:
    """``exc`` as a refusal of that record alone, if it is one (Faust wraps the producer's
    error in a ``ProducerSendError``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TOO_LARGE):
            said = str(cause)
            return PublishRefused(said if type(cause).__name__ in said else f"{type(cause).__name__}: {said}")
        cause = cause.__cause__ or cause.__context__
    return None


async def _delivered(delivery: Any) -> Any:
    """The broker refuses a record for its size only on delivery when its own limit is lower."""
    try:
        return await delivery
    except Exception as exc:
        refused = _refused_for_good(exc)
        if refused is None:
            raise
        raise refused from exc


class BillingService:
    def __init__(
        self,
        ctx: WorkerContext,
        catalog: Catalog,
        store_factory: Callable[[], ClickHouseBillingStore],
        landed_through: Callable[[], Awaitable[datetime | None]] | None = None,
    ):
        self.ctx = ctx
        self._landed_through = landed_through  # see Rater
        self.catalog = catalog
        self._store_factory = store_factory
        self._store: ClickHouseBillingStore | None = None
        self._rater: Rater | None = None
        self._desk: CreditNoteDesk | None = None
        self._spend: SpendMonitor | None = None
        # One run at a time: the tick's (rater, desk, spend monitor) or a flush's (spend monitor).
        # A monitor run during a rating run could read the unpaid invoices before an invoice
        # is stored and the open periods after, and miss it for a moment.
        self._runs = asyncio.Lock()
        currencies = sorted({plan.currency for plan in catalog.plans})
        metrics.start_at_zero(metrics.INVOICES_ISSUED, [(k, c) for k in get_args(InvoiceKind) for c in currencies])
        metrics.start_at_zero(metrics.INVOICED_AMOUNT, [(c,) for c in currencies])
        metrics.start_at_zero(metrics.RATING_RUNS, [("ok",), ("failed",)])
        metrics.start_at_zero(metrics.CREDIT_LIMIT_EVENTS, [(k,) for k in get_args(SpendEventKind)])
        self._plans = {plan.key: plan for plan in catalog.plans}
        self._plan_keys = set(self._plans)
        self._usage_sink: Callable[[], UsageSink] | None = None
        self._flushed: set[str] = set()  # customers whose usage landed since the last limit run
        self._flush_landed = asyncio.Event()
        # This worker's entitlements: told which customers' limit changed (None: poll only).
        self.on_limit_change: Callable[[set[str]], None] | None = None

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
        count_dead_letters_from([topics.subscriptions, topics.credit_grants, topics.customers, topics.credit_notes])
        if self.ctx.settings.rating_enabled:
            app.timer(interval=self.ctx.settings.rating_interval.total_seconds())(self._rate_closed_periods)
            if self._usage_sink is not None:
                app.task(self._follow_flushes)
            # mode types a receiver as taking any positional arguments after the sender; this
            # signal sends exactly one, the revoked partitions.
            app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Hold the rebalance until a run in progress has stored and published what it
        decided. The run chose its customers by the partitions it owned when it started; the
        worker taking a partition over rates it only after this returns, so it reads what this
        run stored instead of deciding the same invoice, credit note or top-up beside it, with
        other inputs, under the same id (a credit note credited twice, one invoice id with two
        contents). The rebalance waits up to the run's length (a rating run of 10,000
        subscriptions takes about 15 s), well within the consumer's poll interval."""
        async with self._runs:
            pass

    def watch_limits(self, usage_sink: Callable[[], UsageSink]) -> None:
        """Check credit limits after each usage flush this worker lands (call before install)."""
        self._usage_sink = usage_sink

    def _on_flush(self, flushes: list[LandedFlush]) -> None:
        """A UsageSink listener, under the flush lock: note who to price, nothing more."""
        for flush in flushes:
            self._flushed.update(flush.customers)
        self._flush_landed.set()

    async def _follow_flushes(self) -> None:
        if self._usage_sink is None:  # installed only with one
            return
        self._usage_sink().listeners.append(self._on_flush)
        while True:
            await self._flush_landed.wait()
            await asyncio.sleep(LIMIT_DEBOUNCE_SECONDS)
            self._flush_landed.clear()
            customers, self._flushed = self._flushed, set()
            if self._spend is not None:  # set up by the first rating tick
                async with self._runs:
                    await self._check_limits(self._spend, customers)

    async def _check_limits(self, spend: SpendMonitor, customers: Collection[str] | None = None) -> None:
        try:
            decided = await spend.run_once(customers=customers)
        except Exception:
            log.exception("credit limit run failed; retried on the next tick")
            return
        self._tell_entitlements(decided)

    def _tell_entitlements(self, decided: list[SpendEvent]) -> None:
        for event in decided:
            metrics.CREDIT_LIMIT_EVENTS.labels(event.kind).inc()
        changed = {event.customer_id for event in decided if event.kind in ("reached", "restored")}
        if changed and self.on_limit_change is not None:
            self.on_limit_change(changed)

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
        stored = await asyncio.to_thread(self.store().subscription_events, data.subscription_id)
        check_owner(data, stored)  # another customer's subscription: dead-lettered, customer_mismatch
        if kind == "changed":  # to another currency or billing interval: dead-lettered, incompatible_plan
            check_plan_change(data, stored, self._plans)
        row = subscription_row(envelope, kind, data, datetime.now(UTC))
        await asyncio.to_thread(self.store().insert_subscription_events, [row])

    async def _store_credit(self, message: Any) -> None:
        envelope, kind, data = parse_credit(message.value or b"", latest_time=self.ctx.latest_time(message))
        owner = await asyncio.to_thread(self.store().grant_owner, data.grant_id)
        check_grant_owner(data, owner)  # another customer's grant id: dead-lettered, customer_mismatch
        if owner is not None and kind in ("granted", "purchased"):  # its own id again: the same terms only
            first = await asyncio.to_thread(self.store().first_grant, data.grant_id)
            check_grant_terms(kind, data, first)  # dead-lettered, invalid_data
        row = credit_row(envelope, kind, data, datetime.now(UTC))
        await asyncio.to_thread(self.store().insert_ledger, [row])

    async def _publish(self, role: str, key: str, value: bytes) -> Any:
        """As the rater's ``publish``: a record refused for its size raises ``PublishRefused``,
        when enqueued or from its delivery, so that it costs that invoice, not the run."""
        topic = self.ctx.topics.invoices if role == "invoices" else self.ctx.topics.credits
        try:
            delivery = await self.ctx.topic(topic).send(key=key.encode(), value=value)
        except Exception as exc:
            refused = _refused_for_good(exc)
            if refused is None:
                raise
            raise refused from exc
        return asyncio.ensure_future(_delivered(delivery))

    async def _rate_closed_periods(self) -> None:
        async with self._runs:
            await self._rate_and_check()

    async def _rate_and_check(self) -> None:
        if self._rater is None:
            self._rater = Rater(
                self.store(),
                self.catalog.plans,
                self.catalog.meters,
                self.ctx.settings.rating_grace,
                self._publish,
                self.owns,
                invoicing=self.catalog.invoicing,
                backfill=self.ctx.settings.rating_backfill,
                landed_through=self._landed_through,
            )
        if self._desk is None:
            notes = ClickHouseCreditNoteStore(self.store().client)
            self._desk = CreditNoteDesk(notes, self.store().insert_ledger, self._publish, self.owns)
        if self._spend is None:
            spend = ClickHouseSpendStore(self.store().client)
            self._spend = SpendMonitor(self.store(), spend, self._rater, self._publish, self.owns)
        started = time.monotonic()
        try:
            result = await self._rater.run_once()
        except Exception:
            metrics.RATING_RUNS.labels("failed").inc()
            log.exception("rating run failed; retried on the next tick")
            return
        metrics.RATING_RUNS.labels("partial" if result.failed or result.refused else "ok").inc()
        metrics.RATING_RUN_SECONDS.observe(time.monotonic() - started)
        record_invoices(result)
        if result.invoices or result.republished:
            log.info("rating run", invoices=len(result.invoices), republished=result.republished)
        try:  # after rating: a note may credit an invoice this run issued
            await self._desk.run_once()
        except Exception:
            log.exception("credit note run failed; retried on the next tick")
        await self._check_limits(self._spend)  # after both: the exposure counts what they issued
