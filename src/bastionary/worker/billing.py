"""Faust wiring for billing: subscription and credit-grant intake, and the rater timer."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import faust
import structlog
from aiokafka.partitioner import DefaultPartitioner

from bastionary.catalog import Catalog
from bastionary.rating.events import (
    InvalidBillingEvent,
    parse_credit,
    parse_subscription,
)
from bastionary.rating.rater import Rater
from bastionary.settings import Settings
from bastionary.storage.billing import BillingStore
from bastionary.topics import Topics

log = structlog.get_logger(__name__)
_partitioner = DefaultPartitioner()


def install_billing(app: faust.App, settings: Settings, catalog: Catalog, store_factory, sink=None) -> None:
    """Add the billing agents, the rater, dunning and (given the usage ``sink`` getter)
    entitlements to ``app``. ``store_factory()`` -> BillingStore."""
    topics = Topics(settings.topic_prefix)
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.usage_partitions}
    subscriptions_topic = app.topic(topics.subscriptions, **raw)
    grants_topic = app.topic(topics.credit_grants, **raw)
    outputs = {
        "invoices": app.topic(topics.invoices, **raw),
        "credits": app.topic(topics.credits, **raw),
        "dlq": app.topic(topics.billing_dlq, **raw),
    }
    plans = {p.key for p in catalog.plans}
    state: dict = {}

    def store() -> BillingStore:
        if "store" not in state:
            state["store"] = store_factory()
        return state["store"]

    async def publish(role: str, key: str, value: bytes):
        return await outputs[role].send(key=key.encode(), value=value)

    dead_letter_topics: dict[str, faust.types.TopicT] = {topics.billing_dlq: outputs["dlq"]}

    async def send_dead_letter(topic: str, message, code: str, text: str, value: bytes | None = None) -> None:
        """To ``topic``, with the reason and (for a consumed record) where it came from."""
        headers = [("error.class", code.encode()), ("error.message", text[:2048].encode())]
        if message is not None:
            headers += [
                ("source.topic", message.topic.encode()),
                ("source.partition", str(message.partition).encode()),
                ("source.offset", str(message.offset).encode()),
            ]
        if topic not in dead_letter_topics:
            dead_letter_topics[topic] = app.topic(topic, **raw)
        key = message.key if message is not None else None
        body = value if value is not None else (message.value or b"")
        await (await dead_letter_topics[topic].send(key=key, value=body, headers=headers))

    async def dead_letter(event, error: InvalidBillingEvent) -> None:
        await send_dead_letter(topics.billing_dlq, event.message, error.code, str(error))

    @app.agent(subscriptions_topic, name="billing-subscriptions")
    async def subscription_intake(stream):
        async for event in stream.events():
            try:
                envelope, kind, data = parse_subscription(event.message.value or b"", plans)
            except InvalidBillingEvent as error:
                await dead_letter(event, error)
                continue
            received = datetime.now(timezone.utc)
            effective = data.effective_at or data.start
            row = (
                envelope.id, kind, data.subscription_id, data.customer_id, data.plan or "",
                data.start or effective, data.billing_anchor, effective, received, data.billing_email or "",
            )
            await asyncio.to_thread(store().insert_subscription_events, [row])

    @app.agent(grants_topic, name="billing-credit-grants")
    async def credit_intake(stream):
        async for event in stream.events():
            try:
                envelope, kind, data = parse_credit(event.message.value or b"")
            except InvalidBillingEvent as error:
                await dead_letter(event, error)
                continue
            at = data.effective_at or envelope.time
            row = (
                envelope.id, kind, data.grant_id, data.customer_id, data.amount or 0, data.currency or "",
                data.priority, at, data.expires_at, "", datetime.now(timezone.utc),
            )
            await asyncio.to_thread(store().insert_ledger, [row])

    def owns(customer_id: str) -> bool:
        """The rater rates the customers whose subscriptions partition this worker owns."""
        assignment = app.consumer.assignment() if app.consumer is not None else set()
        owned = {tp.partition for tp in assignment if tp.topic == topics.subscriptions}
        if not owned:
            return False
        partition = _partitioner(customer_id.encode(), list(range(settings.usage_partitions)), [])
        return partition in owned

    from bastionary.worker.dunning import install_dunning

    install_dunning(app, settings, catalog, lambda: store().client, owns, send_dead_letter)
    if sink is not None:
        from bastionary.worker.entitlements import install_entitlements

        install_entitlements(app, settings, catalog, lambda: store().client, sink, send_dead_letter)

    if not settings.rating_enabled:
        return

    @app.timer(interval=settings.rating_interval.total_seconds())
    async def rate_closed_periods() -> None:
        rater = state.get("rater")
        if rater is None:
            rater = state["rater"] = Rater(store(), catalog, settings.rating_grace, publish, owns)
        try:
            result = await rater.run_once()
        except Exception:
            log.exception("rating run failed; retried on the next tick")
            return
        if result.invoices or result.republished:
            log.info("rating run", invoices=len(result.invoices), republished=result.republished)
