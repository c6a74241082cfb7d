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
    check_against_invoice,
    parse_invoice,
    parse_payment,
    parse_response,
    payment_moment,
)
from bastionary.dunning.notify import SmtpConfig, WebhookConfig
from bastionary.rating.events import InvalidBillingEvent
from bastionary.settings import Settings
from bastionary.storage.dunning import DunningStore, TrailRow
from bastionary.topics import Topics
from bastionary.worker.http import authenticated, json_error

log = structlog.get_logger(__name__)
DELIVERY_CONCURRENCY = 4  # notices in flight per worker; a slow peer holds one slot, not the partition


def install_dunning(app: faust.App, settings: Settings, catalog: Catalog, client_factory, owns, dead_letter) -> None:
    """``dead_letter(topic, key, value, code, message, source)`` sends to a dead-letter topic."""
    topics = Topics(settings.topic_prefix)
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.usage_partitions}
    invoices_topic = app.topic(topics.invoices, **raw)
    payments_topic = app.topic(topics.payments, **raw)
    responses_topic = app.topic(topics.dunning_responses, **raw)
    notices_topic = app.topic(topics.dunning_notices, **raw)
    state: dict = {}

    def store() -> DunningStore:
        if "store" not in state:
            state["store"] = DunningStore(client_factory())
        return state["store"]

    @app.agent(invoices_topic, name="dunning-invoices")
    async def invoice_intake(stream):
        async for event in stream.events():
            try:
                data = parse_invoice(event.message.value or b"")
            except InvalidBillingEvent as error:
                await dead_letter(topics.dunning_dlq, event.message, error.code, str(error))
                continue
            if data is None:
                continue
            row = (data.invoice_id, data.customer_id, data.plan, data.currency, data.total, data.issued_at,
                   data.due_at, data.period_start, data.period_end, datetime.now(timezone.utc))
            await asyncio.to_thread(store().insert_receivables, [row])

    @app.agent(payments_topic, name="dunning-payments")
    async def payment_intake(stream):
        async for event in stream.events():
            value = event.message.value or b""
            try:
                envelope, kind, data = parse_payment(value)
                currency = await asyncio.to_thread(store().invoice_currency, data.invoice_id)
                check_against_invoice(kind, data, currency)
            except InvalidBillingEvent as error:
                await dead_letter(topics.billing_dlq, event.message, error.code, str(error))
                continue
            customer = data.customer_id or await asyncio.to_thread(store().invoice_customer, data.invoice_id)
            row = (
                envelope.id, kind, data.payment_id or envelope.id, data.invoice_id, customer,
                data.amount or 0, data.currency or currency, payment_moment(envelope, data), data.reason,
                datetime.now(timezone.utc),
            )
            await asyncio.to_thread(store().insert_payments, [row])

    @app.agent(responses_topic, name="dunning-responses")
    async def response_intake(stream):
        async for event in stream.events():
            try:
                envelope, kind, data = parse_response(event.message.value or b"")
                customer = await asyncio.to_thread(store().invoice_customer, data.invoice_id)
                if customer is None:
                    raise InvalidBillingEvent("unknown_invoice", f"no invoice {data.invoice_id!r}")
            except InvalidBillingEvent as error:
                await dead_letter(topics.dunning_dlq, event.message, error.code, str(error))
                continue
            row = TrailRow(envelope.id, data.invoice_id, customer, "response", envelope.time, action=kind,
                           channel=data.channel, detail=data.reason or (data.notice_id or ""), until=data.promised_by)
            await asyncio.to_thread(store().insert_trail, [row])

    @app.page("/v1/dunning/responses")
    class ResponsesView(faust.web.View):
        async def post(self, request):
            denied = authenticated(request, settings)
            if denied is not None:
                return denied
            body = await request.read()
            try:
                envelope, _, data = parse_response(body)
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
