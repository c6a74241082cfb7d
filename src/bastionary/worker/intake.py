"""The per-record loop every intake agent shares (billing, dunning, entitlement overrides).

Whatever a record holds, it ends stored or dead-lettered: one record's failure costs that
record, and a storage outage costs none (the worker stops with the record unacked).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
import structlog
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    DataError,
    InterfaceError,
    OperationalError,
)

from bastionary.metrics import INTAKE_DEAD_LETTERED, start_at_zero
from bastionary.storage.client import DataDirLocked

log = structlog.get_logger(__name__)

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


# The classes any of these topics' records can be dead-lettered with; a topic's own ones
# (unknown_plan, unknown_invoice...) appear at their first.
COMMON_DEAD_LETTER_CLASSES = ("invalid_json", "not_cloudevent", "future_time", "unknown_type", "invalid_data")


def count_dead_letters_from(topics: list[str]) -> None:
    """Start each topic's dead-letter counter at 0 for the common classes and internal_error,
    so the first dead letter of each shows on a rate() panel."""
    start_at_zero(
        INTAKE_DEAD_LETTERED, [(t, c) for t in topics for c in (*COMMON_DEAD_LETTER_CLASSES, "internal_error")]
    )


async def consume_intake(
    app: faust.App,
    stream: Any,
    *,
    dead_letter: Callable[..., Awaitable[None]],
    dlq_topic: str,
    invalid: type[Exception],
    handle: Callable[[Any], Awaitable[None]],
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
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                )
                detail = f"{type(exc).__name__}: {exc}"
                await dead_letter(
                    dlq_topic,
                    message,
                    "internal_error",
                    f"internal error while processing this record ({detail[:500]})",
                    exception=type(exc).__name__,
                )
                INTAKE_DEAD_LETTERED.labels(message.topic, "internal_error").inc()
        except Exception:
            # Infrastructure (ClickHouse unreachable, the broker refusing the dead letter, the
            # store not opening): the record is fine, so it is neither dead-lettered nor acked.
            # The worker stops, as the usage flusher does, and a restart retries the record.
            if app.should_stop:
                log.warning(
                    "record left unprocessed while the worker stops; read again after a restart",
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                )
                return
            log.exception(
                "record not stored (storage or broker unavailable); stopping the worker so a restart retries it",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
            await app.crash(RuntimeError(f"intake of {message.topic} failed"))
            return
        await stream.ack(event)
