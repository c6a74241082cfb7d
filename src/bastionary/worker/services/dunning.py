"""The dunning service: invoice, payment and response intake, the decision timer, and the
notifier on ``dunning.notices``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from bastionary import metrics
from bastionary.catalog import Catalog
from bastionary.dunning.clock import clock_from_setting
from bastionary.dunning.delivery import Notifier
from bastionary.dunning.dunner import Dunner
from bastionary.dunning.events import (
    check_against_invoice,
    check_credit_note_against_invoice,
    check_promise,
    credit_note_rows,
    parse_credit_note_issued,
    parse_invoice,
    parse_payment,
    parse_response,
    payment_row,
    receivable_row,
    response_row,
)
from bastionary.dunning.notify import SmtpConfig, WebhookConfig
from bastionary.rating.events import InvalidBillingEvent, latest_event_time
from bastionary.settings import Settings, format_iso_duration
from bastionary.storage.client import Client
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.worker.context import WorkerContext
from bastionary.worker.intake import consume_intake, count_dead_letters_from

log = structlog.get_logger(__name__)
DELIVERY_CONCURRENCY = 4  # notices in flight per worker; a slow peer holds one slot, not the partition
DELIVERY_OUTCOMES = ("delivered", "failed")  # the outcome label of bastionary_dunning_deliveries_total


class DunningService:
    def __init__(
        self, ctx: WorkerContext, catalog: Catalog, client_factory: Callable[[], Client], owns: Callable[[str], bool]
    ):
        self.ctx = ctx
        self.catalog = catalog
        self._client_factory = client_factory
        self._owns = owns
        self._store: ClickHouseDunningStore | None = None
        self._delivery: Notifier | None = None
        self._dunner: Dunner | None = None
        self._deciding = asyncio.Lock()  # a decision run in progress (see _on_revoked)
        self._notifier_configs: tuple[WebhookConfig | None, SmtpConfig | None] = (None, None)
        steps = {(str(n), step.action.value) for p in catalog.dunning.policies for n, step in enumerate(p.steps, 1)}
        metrics.start_at_zero(metrics.DUNNING_NOTICES, sorted(steps))
        channels = sorted({c for p in catalog.dunning.policies for step in p.steps for c in step.channels})
        metrics.start_at_zero(metrics.DUNNING_DELIVERIES, [(c, o) for c in channels for o in DELIVERY_OUTCOMES])
        metrics.start_at_zero(metrics.DUNNING_DELIVERY_ATTEMPTS, [(c,) for c in channels])

    def store(self) -> ClickHouseDunningStore:
        if self._store is None:
            self._store = ClickHouseDunningStore(self._client_factory())
        return self._store

    def install(self) -> None:
        app, topics, settings = self.ctx.app, self.ctx.topics, self.ctx.settings
        app.agent(self.ctx.topic(topics.invoices), name="dunning-invoices")(self._invoice_intake)
        app.agent(self.ctx.topic(topics.payments), name="dunning-payments")(self._payment_intake)
        app.agent(self.ctx.topic(topics.dunning_responses), name="dunning-responses")(self._response_intake)
        count_dead_letters_from([topics.invoices, topics.payments, topics.dunning_responses])
        if not settings.dunning_enabled:
            return
        webhook, smtp = webhook_config(settings), smtp_config(settings)  # a bad setting stops the start
        self._notifier_configs = (webhook, smtp)
        app.agent(self.ctx.topic(topics.dunning_notices), name="dunning-notifier", concurrency=DELIVERY_CONCURRENCY)(
            self._deliver_notices
        )
        app.timer(interval=settings.dunning_interval.total_seconds())(self._decide_cases)
        # mode types a receiver as taking any positional arguments after the sender; this
        # signal sends exactly one, the revoked partitions.
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Hold the rebalance until a decision run in progress has stored and published: the
        worker taking a partition over decides its cases only afterwards, from what this run
        recorded, rather than beside it."""
        async with self._deciding:
            pass

    # -- intake ---------------------------------------------------------------------------

    async def _intake(self, stream: Any, dlq_topic: str, handle: Callable[[Any], Any]) -> None:
        await consume_intake(
            self.ctx.app,
            stream,
            dead_letter=self.ctx.dead_letter,
            dlq_topic=dlq_topic,
            invalid=InvalidBillingEvent,
            handle=handle,
            prepare=self.store,
        )

    async def _invoice_intake(self, stream: Any) -> None:
        await self._intake(stream, self.ctx.topics.dunning_dlq, self._store_invoice)

    async def _payment_intake(self, stream: Any) -> None:
        await self._intake(stream, self.ctx.topics.billing_dlq, self._store_payment)

    async def _response_intake(self, stream: Any) -> None:
        await self._intake(stream, self.ctx.topics.dunning_dlq, self._store_response)

    async def _store_invoice(self, message: Any) -> None:
        value = message.value or b""
        data = parse_invoice(value)
        if data is not None:
            await asyncio.to_thread(self.store().insert_receivables, [receivable_row(data, datetime.now(UTC))])
            if data.backfill and not self.ctx.settings.dunning_backfill:
                log.warning(
                    "invoice issued by a backfill: dunning leaves it alone",
                    invoice_id=data.invoice_id,
                    customer_id=data.customer_id,
                    to_chase_it="BASTIONARY_DUNNING_BACKFILL=true",
                )
            return
        note = parse_credit_note_issued(value)
        if note is not None:
            store = self.store()
            invoice = await asyncio.to_thread(store.invoice_currency_customer, note.invoice_id)
            check_credit_note_against_invoice(note, invoice)
            rows = credit_note_rows(note.credit_note_id, note, datetime.now(UTC))
            await asyncio.to_thread(store.insert_payments, rows)

    async def _store_payment(self, message: Any) -> None:
        store = self.store()
        envelope, kind, data = parse_payment(message.value or b"", latest_time=self.ctx.latest_time(message))
        invoice = await asyncio.to_thread(store.invoice_currency_customer, data.invoice_id)
        currency, invoice_customer = invoice or (None, None)
        check_against_invoice(kind, data, currency, invoice_customer)
        customer = data.customer_id or invoice_customer or ""
        row = payment_row(envelope, kind, data, customer, currency or "", datetime.now(UTC))
        await asyncio.to_thread(store.insert_payments, [row])

    async def _store_response(self, message: Any) -> None:
        envelope, kind, data = parse_response(message.value or b"", latest_time=self.ctx.latest_time(message))
        invoice = await asyncio.to_thread(self.store().invoice_customer_plan, data.invoice_id)
        if invoice is None:
            raise InvalidBillingEvent("unknown_invoice", f"no invoice {data.invoice_id!r}")
        customer, plan = invoice
        check_promise(envelope, kind, data, self.catalog.dunning.max_promise_for(plan))
        await asyncio.to_thread(self.store().insert_trail, [response_row(envelope, kind, data, customer)])

    async def accept_response(self, body: bytes, customer: str | None = None) -> tuple[str, str]:
        """A response posted over HTTP: checked as the topic's reader will check it (the record
        stamped about now), then sent through the topic, so a response has one path and one
        validation and survives this worker dying right after the 202. Returns (id, invoice).

        ``customer``: the only customer the caller may act for; a response to another
        customer's invoice (or an unknown one) is refused as ``other_customer``, and one dated
        earlier than now by more than ``BASTIONARY_MAX_FUTURE_SKEW`` as ``backdated_time``:
        a promise or a dispute pauses the policy's clock from its ``time``, so a customer
        dating one back would erase the days it was overdue (and the steps they were due for)."""
        now = datetime.now(UTC)
        skew = self.ctx.settings.max_future_skew
        envelope, _, data = parse_response(body, latest_time=latest_event_time(now.timestamp(), skew))
        if customer is not None and envelope.time < now - skew:
            raise InvalidBillingEvent(
                "backdated_time",
                f"time {envelope.time.isoformat()} is more than {format_iso_duration(skew)} before now:"
                " a customer's response is dated when it is sent",
            )
        if customer is not None:
            owner = await asyncio.to_thread(self.store().invoice_customer, data.invoice_id)
            if owner != customer:
                raise PermissionError(f"invoice {data.invoice_id!r} is not customer {customer!r}'s")
        topic = self.ctx.topic(self.ctx.topics.dunning_responses)
        await (await topic.send(key=data.invoice_id.encode(), value=body))
        return envelope.id, data.invoice_id

    # -- decisions and delivery -----------------------------------------------------------

    def _notifier(self) -> Notifier:
        if self._delivery is None:
            webhook, smtp = self._notifier_configs
            self._delivery = Notifier(
                self.store(), webhook, smtp, self._dead_letter_notice, self.ctx.settings.company_name
            )
        return self._delivery

    async def _dead_letter_notice(self, value: bytes, code: str, message: str) -> None:
        await self.ctx.dead_letter(self.ctx.topics.dunning_dlq, None, code, message, value=value)

    async def _deliver_notices(self, stream: Any) -> None:
        async for value in stream:
            try:
                outcomes = await self._notifier().handle(value)
            except Exception:
                # A storage failure: nothing was recorded as delivered, so a restart sends it.
                log.exception("notice delivery failed; stopping so a restart redelivers it")
                await self.ctx.app.crash(RuntimeError("notice delivery failed"))
                return
            delivered, failed = DELIVERY_OUTCOMES
            for outcome in outcomes:
                metrics.DUNNING_DELIVERIES.labels(outcome.channel, delivered if outcome.ok else failed).inc()
                metrics.DUNNING_DELIVERY_ATTEMPTS.labels(outcome.channel).inc(outcome.attempts)

    async def _publish_notice(self, key: str, value: bytes) -> Any:
        return await self.ctx.topic(self.ctx.topics.dunning_notices).send(key=key.encode(), value=value)

    async def _decide_cases(self) -> None:
        async with self._deciding:
            await self._decide_cases_now()

    async def _decide_cases_now(self) -> None:
        if self._dunner is None:
            clock = clock_from_setting(self.ctx.settings.clock)
            self._dunner = Dunner(
                self.store(),
                self.catalog.dunning,
                self._publish_notice,
                clock,
                self._owns,
                chase_backfill=self.ctx.settings.dunning_backfill,
            )
        try:
            result = await self._dunner.run_once()
        except Exception:
            log.exception("dunning run failed; retried on the next tick")
            return
        for notice in result.published:
            metrics.DUNNING_NOTICES.labels(str(notice.get("step", "")), str(notice.get("action", ""))).inc()
        if result.recorded or result.republished:
            log.info(
                "dunning run", recorded=result.recorded, published=len(result.published), republished=result.republished
            )


def webhook_config(settings: Settings) -> WebhookConfig | None:
    if not settings.webhook_url:
        return None
    if settings.webhook_secret is None:
        raise ValueError("BASTIONARY_WEBHOOK_URL is set without BASTIONARY_WEBHOOK_SECRET")
    return WebhookConfig(
        url=settings.webhook_url,
        secret=settings.webhook_secret,
        timeout=settings.webhook_timeout.total_seconds(),
        max_attempts=settings.webhook_max_attempts,
        backoff_base=settings.webhook_backoff.total_seconds(),
        backoff_cap=settings.webhook_backoff_cap.total_seconds(),
    )


def smtp_config(settings: Settings) -> SmtpConfig | None:
    if not settings.smtp_host:
        return None
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_sender,
        username=settings.smtp_username,
        password=settings.smtp_password,
        starttls=settings.smtp_starttls,
        use_tls=settings.smtp_tls,
        max_attempts=settings.smtp_max_attempts,
    )
