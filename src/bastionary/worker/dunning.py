"""Faust wiring for dunning: payment and response intake, the decision timer, the notifier
agent on dunning.notices and the responses endpoint."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import faust
import structlog

from bastionary.catalog import Catalog
from bastionary.dunning.clock import clock_from_setting
from bastionary.dunning.delivery import Notifier
from bastionary.dunning.dunner import Dunner
from bastionary.dunning.events import (
    InvoiceData,
    PaymentData,
    ResponseData,
    check_against_invoice,
    check_promise,
    parse_invoice,
    parse_payment,
    parse_response,
    payment_moment,
)
from bastionary.dunning.notify import SmtpConfig, WebhookConfig
from bastionary.rating.events import BillingEvent, InvalidBillingEvent, latest_event_time
from bastionary.settings import Settings
from bastionary.dunning.ports import TrailRow
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.topics import Topics
from bastionary.worker.billing import consume_intake
from bastionary.worker.http import authenticated, json_error

log = structlog.get_logger(__name__)
DELIVERY_CONCURRENCY = 4  # notices in flight per worker; a slow peer holds one slot, not the partition


def install_dunning(app: faust.App, settings: Settings, catalog: Catalog, client_factory, owns, dead_letter) -> None:
    """``dead_letter(topic, message, code, text, value=None, exception=None)`` sends to a
    dead-letter topic (see install_billing's send_dead_letter)."""
    topics = Topics(settings.topic_prefix)
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.usage_partitions}
    invoices_topic = app.topic(topics.invoices, **raw)
    payments_topic = app.topic(topics.payments, **raw)
    responses_topic = app.topic(topics.dunning_responses, **raw)
    notices_topic = app.topic(topics.dunning_notices, **raw)
    state: dict = {}

    def store() -> ClickHouseDunningStore:
        if "store" not in state:
            state["store"] = ClickHouseDunningStore(client_factory())
        return state["store"]

    def latest(message) -> datetime | None:
        """The latest event ``time`` a record may carry (``future_time`` beyond it)."""
        return latest_event_time(message.timestamp, settings.max_future_skew)

    def intake(stream, dlq_topic: str, handle):
        return consume_intake(app, stream, dead_letter=dead_letter, dlq_topic=dlq_topic,
                              invalid=InvalidBillingEvent, handle=handle, prepare=store)

    async def store_invoice(message) -> None:
        data = parse_invoice(message.value or b"")
        if data is None:
            return
        row = receivable_row(data, datetime.now(timezone.utc))
        await asyncio.to_thread(store().insert_receivables, [row])

    async def store_payment(message) -> None:
        envelope, kind, data = parse_payment(message.value or b"", latest_time=latest(message))
        currency = await asyncio.to_thread(store().invoice_currency, data.invoice_id)
        check_against_invoice(kind, data, currency)
        customer = data.customer_id or await asyncio.to_thread(store().invoice_customer, data.invoice_id)
        row = payment_row(envelope, kind, data, customer, currency, datetime.now(timezone.utc))
        await asyncio.to_thread(store().insert_payments, [row])

    async def store_response(message) -> None:
        envelope, kind, data = parse_response(message.value or b"", latest_time=latest(message))
        invoice = await asyncio.to_thread(store().invoice_customer_plan, data.invoice_id)
        if invoice is None:
            raise InvalidBillingEvent("unknown_invoice", f"no invoice {data.invoice_id!r}")
        customer, plan = invoice
        check_promise(envelope, kind, data, catalog.dunning.max_promise_for(plan))
        await asyncio.to_thread(store().insert_trail, [response_row(envelope, kind, data, customer)])

    @app.agent(invoices_topic, name="dunning-invoices")
    async def invoice_intake(stream):
        await intake(stream, topics.dunning_dlq, store_invoice)

    @app.agent(payments_topic, name="dunning-payments")
    async def payment_intake(stream):
        await intake(stream, topics.billing_dlq, store_payment)

    @app.agent(responses_topic, name="dunning-responses")
    async def response_intake(stream):
        await intake(stream, topics.dunning_dlq, store_response)

    @app.page("/v1/dunning/responses")
    class ResponsesView(faust.web.View):
        async def post(self, request):
            denied = authenticated(request, settings)
            if denied is not None:
                return denied
            body = await request.read()
            try:
                # Checked as the topic's reader will check it, the record stamped about now.
                latest = latest_event_time(datetime.now(timezone.utc).timestamp(), settings.max_future_skew)
                envelope, _, data = parse_response(body, latest_time=latest)
            except InvalidBillingEvent as error:
                return json_error(400, "invalid_event", str(error))
            # Through the topic, not straight to the table: one path, one validation, and
            # the response survives this worker dying right after the 202.
            await (await responses_topic.send(key=data.invoice_id.encode(), value=body))
            return self.json({"accepted": True, "id": envelope.id}, status=202)

    if not settings.dunning_enabled:
        return
    webhook, smtp = webhook_config(settings), smtp_config(settings)  # a bad setting stops the start

    def notifier() -> Notifier:
        if "notifier" not in state:
            state["notifier"] = Notifier(store(), webhook, smtp,
                                         lambda value, code, message: _dlq_value(value, code, message),
                                         settings.company_name)
        return state["notifier"]

    async def _dlq_value(value: bytes, code: str, message: str) -> None:
        await dead_letter(topics.dunning_dlq, None, code, message, value=value)

    @app.agent(notices_topic, name="dunning-notifier", concurrency=DELIVERY_CONCURRENCY)
    async def deliver_notices(stream):
        async for value in stream:
            try:
                await notifier().handle(value)
            except Exception:
                # A storage failure: nothing was recorded as delivered, so a restart sends it.
                log.exception("notice delivery failed; stopping so a restart redelivers it")
                await app.crash(RuntimeError("notice delivery failed"))
                return

    clock = clock_from_setting(settings.clock)

    async def publish(key: str, value: bytes):
        return await notices_topic.send(key=key.encode(), value=value)

    @app.timer(interval=settings.dunning_interval.total_seconds())
    async def decide_cases() -> None:
        dunner = state.get("dunner")
        if dunner is None:
            dunner = state["dunner"] = Dunner(store(), catalog.dunning, publish, clock, owns)
        try:
            result = await dunner.run_once()
        except Exception:
            log.exception("dunning run failed; retried on the next tick")
            return
        if result.recorded or result.republished:
            log.info("dunning run", recorded=result.recorded, published=len(result.published),
                     republished=result.republished)


def receivable_row(data: InvoiceData, received: datetime) -> tuple:
    """The ``receivables`` row (RECEIVABLE_COLUMNS) of a finalized invoice."""
    return (data.invoice_id, data.customer_id, data.plan, data.currency, data.total, data.issued_at,
            data.due_at, data.period_start, data.period_end, received)


def payment_row(envelope: BillingEvent, kind: str, data: PaymentData, customer: str, invoice_currency: str,
                received: datetime) -> tuple:
    """The ``payments`` row (PAYMENT_COLUMNS) of a payment that fits its invoice."""
    return (
        envelope.id, kind, data.payment_id or envelope.id, data.invoice_id, customer,
        data.amount or 0, data.currency or invoice_currency, payment_moment(envelope, data), data.reason, received,
    )


def response_row(envelope: BillingEvent, kind: str, data: ResponseData, customer: str) -> TrailRow:
    """The ``dunning_events`` response row of a response to an invoice of ``customer``."""
    return TrailRow(envelope.id, data.invoice_id, customer, "response", envelope.time, action=kind,
                    channel=data.channel, detail=data.reason or (data.notice_id or ""), until=data.promised_by)


def webhook_config(settings: Settings) -> WebhookConfig | None:
    if not settings.webhook_url:
        return None
    if settings.webhook_secret is None:
        raise ValueError("BASTIONARY_WEBHOOK_URL is set without BASTIONARY_WEBHOOK_SECRET")
    return WebhookConfig(
        url=settings.webhook_url, secret=settings.webhook_secret,
        timeout=settings.webhook_timeout.total_seconds(), max_attempts=settings.webhook_max_attempts,
        backoff_base=settings.webhook_backoff.total_seconds(), backoff_cap=settings.webhook_backoff_cap.total_seconds(),
    )


def smtp_config(settings: Settings) -> SmtpConfig | None:
    if not settings.smtp_host:
        return None
    return SmtpConfig(
        host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_sender,
        username=settings.smtp_username, password=settings.smtp_password, starttls=settings.smtp_starttls,
        use_tls=settings.smtp_tls, max_attempts=settings.smtp_max_attempts,
    )
