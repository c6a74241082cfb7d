"""One record's failure costs that record only, and an infrastructure failure costs none.

:func:`bastionary.worker.intake.consume_intake` runs every billing, dunning and override
intake agent; :func:`is_infrastructure_failure` decides whether an exception is the record's
(dead-lettered as ``internal_error``) or the infrastructure's (the worker stops, the record
stays unacked and is read again after a restart). No broker, no database: a fake stream.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StreamFailureError,
)
from structlog.testing import capture_logs

from bastionary.entitlements.overrides import InvalidOverride
from bastionary.metrics import REGISTRY
from bastionary.rating.events import InvalidBillingEvent
from bastionary.storage.client import DataDirLocked
from bastionary.worker.intake import CLICKHOUSE_DATA_ERRORS, consume_intake, is_infrastructure_failure


def _from(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _cycle() -> BaseException:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    return a


INFRASTRUCTURE = [
    OperationalError("Error HTTPConnectionPool(host='localhost', port=8123): Max retries exceeded"),
    StreamFailureError("stream failed"),
    InterfaceError("client closed"),
    DatabaseError("HTTP driver received HTTP status 502", code=None),  # a proxy: no ClickHouse verdict
    DatabaseError("Received ClickHouse exception, code: 241 (MEMORY_LIMIT_EXCEEDED)", code=241),
    DatabaseError("code: 242 TABLE_IS_READ_ONLY", code=242, name="TABLE_IS_READ_ONLY"),
    DatabaseError("code: 252 TOO_MANY_PARTS", code=252),
    DatabaseError("code: 60 UNKNOWN_TABLE", code=60, name="UNKNOWN_TABLE"),  # migrations not applied
    DatabaseError("code: 516 AUTHENTICATION_FAILED", code=516),
    ProgrammingError("Unrecognized column 'billing_email' in table subscriptions"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    TimeoutError("timed out"),
    socket.gaierror(-2, "Name or service not known"),
    OSError(28, "No space left on device"),
    MemoryError(),
    KafkaConnectionError("Connection at localhost:9092 closed"),
    KafkaTimeoutError(),
    DataDirLocked("/var/lib/bastionary/clickhouse"),
    _from(RuntimeError("insert failed"), OperationalError("Network Error")),
    _from(ValueError("wrapped"), _from(KeyError("x"), ConnectionRefusedError())),
]
THE_RECORD_S = [
    DataError("Unable to create native array for column `priority`: error"),  # Int32 overflow, client side
    DatabaseError("code: 321 VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", code=321),
    DatabaseError("code: 407 DECIMAL_OVERFLOW", code=407),
    DatabaseError("code: 41 CANNOT_PARSE_DATETIME", code=41),
    DatabaseError("a value ClickHouse cannot parse", code=None, name="CANNOT_PARSE_TEXT"),
    OverflowError("int too big to convert"),  # a Decimal beyond Decimal(38, 9), client side
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ValueError("bad"),
    TypeError("unsupported operand"),
    KeyError("missing"),
    AttributeError("no such attribute"),
    ZeroDivisionError(),
    RecursionError(),
    InvalidBillingEvent("invalid_data", "x"),
    _from(ValueError("a"), KeyError("b")),
    _cycle(),
]


@pytest.mark.parametrize("exc", INFRASTRUCTURE, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_infrastructure_failures(exc):
    assert is_infrastructure_failure(exc)


@pytest.mark.parametrize("exc", THE_RECORD_S, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_failures_of_the_record(exc):
    assert not is_infrastructure_failure(exc)


def test_the_data_error_codes_are_clickhouse_s():
    # Spot checks against ClickHouse's ErrorCodes.cpp: a wrong number would stop the worker
    # (or dead-letter an infrastructure failure) for the wrong reason.
    assert CLICKHOUSE_DATA_ERRORS[321] == "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"
    assert CLICKHOUSE_DATA_ERRORS[407] == "DECIMAL_OVERFLOW"
    assert CLICKHOUSE_DATA_ERRORS[6] == "CANNOT_PARSE_TEXT"
    assert not {159, 164, 202, 209, 210, 241, 242, 243, 252, 279, 394, 999, 1000} & set(CLICKHOUSE_DATA_ERRORS)


def test_a_refused_connection_from_the_real_client_is_infrastructure():
    import clickhouse_connect

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Exception) as caught:
        clickhouse_connect.get_client(host="127.0.0.1", port=port, connect_timeout=2, send_receive_timeout=2)
    assert is_infrastructure_failure(caught.value), repr(caught.value)


# --- the per-record loop ---------------------------------------------------------------


@dataclass
class Message:
    offset: int
    value: bytes = b"{}"
    topic: str = "t.billing.subscriptions"
    partition: int = 0
    key: bytes | None = b"cust-1"
    timestamp: float = 1772704800.0


@dataclass
class Event:
    message: Message


class Stream:
    def __init__(self, messages: list[Message]):
        self.messages = messages
        self.acked: list[int] = []
        self.read: list[int] = []
        self.acks_enabled = True

    def noack(self) -> Stream:
        self.acks_enabled = False
        return self

    async def events(self):
        for message in self.messages:
            self.read.append(message.offset)
            yield Event(message)

    async def ack(self, event: Event) -> bool:
        self.acked.append(event.message.offset)
        return True


class App:
    def __init__(self, stopping: bool = False):
        self.should_stop = stopping
        self.crashes: list[BaseException] = []

    async def crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)


class DeadLetters:
    def __init__(self, fail_with: BaseException | None = None):
        self.sent: list[tuple] = []
        self.fail_with = fail_with

    async def __call__(self, topic, message, code, text, value=None, exception=None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((topic, message.offset, code, text, exception))


def run(
    messages: list[Message],
    failures: dict[int, BaseException],
    *,
    app: App | None = None,
    dead_letters: DeadLetters | None = None,
    invalid: type[Exception] = InvalidBillingEvent,
    prepare=None,
):
    """Consume ``messages``; the record at offset n raises ``failures[n]`` when handled."""
    app = app or App()
    stream = Stream(messages)
    dead_letters = dead_letters or DeadLetters()
    stored: list[int] = []

    async def handle(message: Message) -> None:
        await asyncio.sleep(0)
        if message.offset in failures:
            raise failures[message.offset]
        stored.append(message.offset)

    asyncio.run(
        consume_intake(
            app,
            stream,
            dead_letter=dead_letters,
            dlq_topic="t.billing.dlq",
            invalid=invalid,
            handle=handle,
            prepare=prepare,
        )
    )
    return app, stream, dead_letters, stored


def counted(topic: str, error_class: str) -> float:
    value = REGISTRY.get_sample_value(
        "bastionary_intake_dead_lettered_total", {"topic": topic, "error_class": error_class}
    )
    return value or 0.0


def test_a_rejected_record_is_dead_lettered_with_its_code_and_the_partition_goes_on():
    before = counted("t.billing.subscriptions", "unknown_plan")
    _, stream, dead_letters, stored = run(
        [Message(0), Message(1), Message(2)], {1: InvalidBillingEvent("unknown_plan", "plan 'x' is not in the catalog")}
    )
    assert dead_letters.sent == [("t.billing.dlq", 1, "unknown_plan", "plan 'x' is not in the catalog", None)]
    assert stored == [0, 2] and stream.acked == [0, 1, 2]
    assert not stream.acks_enabled  # acks are ours: Faust's would ack a record an agent crashed on
    assert counted("t.billing.subscriptions", "unknown_plan") == before + 1


def test_the_parser_s_own_error_type_is_the_one_dead_lettered_with_its_code():
    _, stream, dead_letters, _ = run(
        [Message(0, topic="t.entitlements.overrides")],
        {0: InvalidOverride("future_time", "time is after ...")},
        invalid=InvalidOverride,
    )
    assert [(s[2], s[4]) for s in dead_letters.sent] == [("future_time", None)]
    assert stream.acked == [0]


@pytest.mark.parametrize("exc", THE_RECORD_S[:7], ids=lambda e: type(e).__name__)
def test_any_other_exception_costs_the_record_as_internal_error(exc):
    before = counted("t.billing.subscriptions", "internal_error")
    with capture_logs() as logs:
        app, stream, dead_letters, stored = run([Message(0), Message(1), Message(2)], {1: exc})
    ((topic, offset, code, text, exception),) = dead_letters.sent
    assert (topic, offset, code, exception) == ("t.billing.dlq", 1, "internal_error", type(exc).__name__)
    assert text.startswith("internal error while processing this record (" + type(exc).__name__) and len(text) < 700
    assert stored == [0, 2] and stream.acked == [0, 1, 2] and app.crashes == []
    assert counted("t.billing.subscriptions", "internal_error") == before + 1
    (error,) = [entry for entry in logs if entry["log_level"] == "error"]
    assert error["offset"] == 1 and error["exc_info"] is True and "internal_error" in error["event"]


@pytest.mark.parametrize("exc", INFRASTRUCTURE[:6] + INFRASTRUCTURE[10:13], ids=lambda e: type(e).__name__)
def test_an_infrastructure_failure_stops_the_worker_without_a_dead_letter_or_an_ack(exc):
    before = counted("t.billing.subscriptions", "internal_error")
    with capture_logs() as logs:
        app, stream, dead_letters, stored = run([Message(0), Message(1), Message(2)], {1: exc})
    assert dead_letters.sent == []
    assert stream.acked == [0]  # record 1 stays unacked: a restart reads it again
    assert stream.read == [0, 1] and stored == [0]  # nothing after it is processed (or acked)
    assert len(app.crashes) == 1
    assert counted("t.billing.subscriptions", "internal_error") == before
    assert any(entry["log_level"] == "error" and "stopping the worker" in entry["event"] for entry in logs)


def test_a_dead_letter_the_broker_does_not_take_stops_the_worker():
    app, stream, _, _ = run(
        [Message(0), Message(1)],
        {0: InvalidBillingEvent("invalid_json", "x")},
        dead_letters=DeadLetters(fail_with=KafkaTimeoutError()),
    )
    assert stream.acked == [] and stream.read == [0] and len(app.crashes) == 1


def test_a_store_that_does_not_open_stops_the_worker():
    def prepare():
        raise OperationalError("Error executing HTTP request")

    app, stream, dead_letters, stored = run([Message(0)], {}, prepare=prepare)
    assert stored == [] and stream.acked == [] and dead_letters.sent == [] and len(app.crashes) == 1


def test_while_the_worker_stops_a_failing_record_is_left_for_the_restart():
    app, stream, dead_letters, _ = run([Message(0), Message(1)], {0: RuntimeError("cannot schedule new futures after shutdown")},
                                       app=App(stopping=True))  # fmt: skip
    assert dead_letters.sent == [] and stream.acked == [] and app.crashes == []
