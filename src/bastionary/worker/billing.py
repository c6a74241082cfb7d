"""Faust wiring for billing: subscription and credit-grant intake, and the rater timer.

Also what every intake agent (billing, dunning, entitlement overrides) shares: the dead-letter
sender and :func:`consume_intake`, the per-record loop that keeps one record's failure to
that record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

import faust
import structlog
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    DataError,
    InterfaceError,
    OperationalError,
)

from bastionary.catalog import Catalog
from bastionary.metrics import INTAKE_DEAD_LETTERED
from bastionary.rating.events import (
    BillingEvent,
    CreditGrantData,
    InvalidBillingEvent,
    SubscriptionData,
    latest_event_time,
    parse_credit,
    parse_subscription,
)
from bastionary.rating.rater import Rater
from bastionary.settings import Settings
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import DataDirLocked
from bastionary.topics import Topics

log = structlog.get_logger(__name__)
_partitioner = DefaultPartitioner()

# ClickHouse error codes that mean "these values cannot be stored": a record our validation let
# through. Every other ClickHouse error is the server's or the deployment's (down, overloaded,
# read-only, out of memory or disk, a table or column missing) and would meet any record.
CLICKHOUSE_DATA_ERRORS = {
    6: "CANNOT_PARSE_TEXT",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    407: "DECIMAL_OVERFLOW",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}
_CLICKHOUSE_DATA_ERROR_NAMES = frozenset(CLICKHOUSE_DATA_ERRORS.values())


def is_infrastructure_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised while one record was being stored, is a failure of what the
    worker depends on rather than of the record.

    Infrastructure: ClickHouse unreachable or timing out (clickhouse-connect's
    OperationalError, OSError and its ConnectionError and TimeoutError), a ClickHouse error
    that is not about the values sent (overloaded, read-only, a missing table; an HTTP
    failure with no ClickHouse code), the broker (KafkaError), the chdb directory held
    elsewhere, memory. Such a failure would meet any record, so it must not cost this one.

    The record's: everything else, such as a value the column cannot hold (clickhouse-connect's
    DataError, a ClickHouse parse or range error, an OverflowError while encoding) or a bug of
    ours. An exception raised ``from`` an infrastructure failure counts as one.
    """
    current: BaseException | None = exc
    for _ in range(16):  # __cause__ chains are short; a cycle must not hang the worker
        if current is None:
            return False
        if isinstance(current, (OSError, MemoryError, KafkaError, DataDirLocked)):
            return True
        if isinstance(current, ClickHouseError):
            if isinstance(current, (OperationalError, InterfaceError)):
                return True
            if isinstance(current, DataError):  # raised by the client while encoding a value
                return False
            if isinstance(current, DatabaseError):
                code, name = getattr(current, "code", None), getattr(current, "name", None)
                return code not in CLICKHOUSE_DATA_ERRORS and name not in _CLICKHOUSE_DATA_ERROR_NAMES
            return True
        current = current.__cause__
    return False


async def consume_intake(
    app: faust.App,
    stream,
    *,
    dead_letter: Callable[..., Awaitable[None]],
    dlq_topic: str,
    invalid: type[Exception],
    handle: Callable[[object], Awaitable[None]],
    prepare: Callable[[], object] | None = None,
) -> None:
    """Store each record of ``stream`` with ``await handle(message)``, one at a time.

    Whatever a record holds, it ends stored or dead-lettered to ``dlq_topic`` and acked; it
    never stops the agent or blocks the partition. ``invalid`` (the parser's error, which
    carries a ``code``) is dead-lettered with its code; any other exception as
    ``internal_error`` with an ``error.exception`` header, logged at ERROR: a bug of ours, or
    a value our validation let through, costs that record only. Each dead letter is counted
    in ``bastionary_intake_dead_lettered_total{topic, error_class}``.

    Only a failure that is not the record's (:func:`is_infrastructure_failure`, a dead letter
    the broker does not take, or ``prepare()`` failing to open the store) stops the worker,
    with the record neither dead-lettered nor acked: a restart reads it again. Acks are ours,
    not Faust's: an exception escaping an agent makes Faust ack the record in hand, restart
    the agent and go on with the next record, which would lose it.
    """
    stream = stream.noack()
    async for event in stream.events():
        message = event.message
        try:
            if prepare is not None:
                prepare()
            try:
                await handle(message)
            except invalid as error:
                code = getattr(error, "code", "invalid_data")
                await dead_letter(dlq_topic, message, code, str(error))
                INTAKE_DEAD_LETTERED.labels(message.topic, code).inc()
            except Exception as exc:
                if is_infrastructure_failure(exc) or app.should_stop:
                    raise  # not the record's fault: handled below, without a dead letter
                log.exception(
                    "record could not be processed; dead-lettered as internal_error",
                    topic=message.topic, partition=message.partition, offset=message.offset,
                )
                detail = f"{type(exc).__name__}: {exc}"
                await dead_letter(
                    dlq_topic, message, "internal_error",
                    f"internal error while processing this record ({detail[:500]})",
                    exception=type(exc).__name__,
                )
                INTAKE_DEAD_LETTERED.labels(message.topic, "internal_error").inc()
        except Exception:
            # Infrastructure (ClickHouse unreachable, the broker refusing the dead letter, the
            # store not opening): the record is fine, so it is neither dead-lettered nor acked.
            # The worker stops, as the usage flusher does, and a restart retries the record.
            if app.should_stop:
                log.warning("record left unprocessed while the worker stops; read again after a restart",
                            topic=message.topic, partition=message.partition, offset=message.offset)
                return
            log.exception(
                "record not stored (storage or broker unavailable); stopping the worker so a restart retries it",
                topic=message.topic, partition=message.partition, offset=message.offset,
            )
            await app.crash(RuntimeError(f"intake of {message.topic} failed"))
            return
        await stream.ack(event)


def subscription_row(envelope: BillingEvent, kind: str, data: SubscriptionData, received: datetime) -> tuple:
    """The ``subscriptions`` row (SUBSCRIPTION_COLUMNS) of a parsed subscription event."""
    effective = data.effective_at or data.start
    return (
        envelope.id, kind, data.subscription_id, data.customer_id, data.plan or "",
        data.start or effective, data.billing_anchor, effective, received, data.billing_email or "",
    )


def credit_row(envelope: BillingEvent, kind: str, data: CreditGrantData, recorded: datetime) -> tuple:
    """The ``credit_ledger`` row (LEDGER_COLUMNS) of a parsed grant or void."""
    return (
        envelope.id, kind, data.grant_id, data.customer_id, data.amount or 0, data.currency or "",
        data.priority, data.effective_at or envelope.time, data.expires_at, "", recorded,
    )


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

    def store() -> ClickHouseBillingStore:
        if "store" not in state:
            state["store"] = store_factory()
        return state["store"]

    async def publish(role: str, key: str, value: bytes):
        return await outputs[role].send(key=key.encode(), value=value)

    dead_letter_topics: dict[str, faust.types.TopicT] = {topics.billing_dlq: outputs["dlq"]}

    async def send_dead_letter(
        topic: str, message, code: str, text: str, value: bytes | None = None, exception: str | None = None
    ) -> None:
        """To ``topic``, with the reason, (for a consumed record) where it came from and (for an
        ``internal_error``) the type of the exception met."""
        headers = [("error.class", code.encode()), ("error.message", text[:2048].encode())]
        if message is not None:
            headers += [
                ("source.topic", message.topic.encode()),
                ("source.partition", str(message.partition).encode()),
                ("source.offset", str(message.offset).encode()),
            ]
        if exception is not None:
            headers.append(("error.exception", exception.encode()))
        if topic not in dead_letter_topics:
            dead_letter_topics[topic] = app.topic(topic, **raw)
        key = message.key if message is not None else None
        body = value if value is not None else (message.value or b"")
        await (await dead_letter_topics[topic].send(key=key, value=body, headers=headers))

    def latest(message) -> datetime | None:
        """The latest event ``time`` a record may carry (``future_time`` beyond it)."""
        return latest_event_time(message.timestamp, settings.max_future_skew)

    def intake(stream, handle):
        return consume_intake(app, stream, dead_letter=send_dead_letter, dlq_topic=topics.billing_dlq,
                              invalid=InvalidBillingEvent, handle=handle, prepare=store)

    async def store_subscription(message) -> None:
        envelope, kind, data = parse_subscription(message.value or b"", plans, latest_time=latest(message))
        row = subscription_row(envelope, kind, data, datetime.now(timezone.utc))
        await asyncio.to_thread(store().insert_subscription_events, [row])

    async def store_credit(message) -> None:
        envelope, kind, data = parse_credit(message.value or b"", latest_time=latest(message))
        row = credit_row(envelope, kind, data, datetime.now(timezone.utc))
        await asyncio.to_thread(store().insert_ledger, [row])

    @app.agent(subscriptions_topic, name="billing-subscriptions")
    async def subscription_intake(stream):
        await intake(stream, store_subscription)

    @app.agent(grants_topic, name="billing-credit-grants")
    async def credit_intake(stream):
        await intake(stream, store_credit)

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
            rater = state["rater"] = Rater(store(), catalog.plans, catalog.meters, settings.rating_grace, publish, owns)
        try:
            result = await rater.run_once()
        except Exception:
            log.exception("rating run failed; retried on the next tick")
            return
        if result.invoices or result.republished:
            log.info("rating run", invoices=len(result.invoices), republished=result.republished)
