"""How tracked events leave the process: over HTTP (``POST /v1/events``) or straight to
Kafka. Both send a batch whole and raise on failure; the batcher decides about retries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from bastionary.client.errors import ApiUnreachable, BastionaryError, EventsRejected

BATCH_TYPE = "application/cloudevents-batch+json"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0  # the longest a retry waits for a server's Retry-After
T = TypeVar("T")


class Retryable(Exception):
    """A failure a later attempt may not have: the network, a timeout, a busy server."""

    def __init__(self, cause: BaseException, retry_after: float | None = None):
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after


async def with_retries(attempt: Callable[[], Awaitable[T]], max_retries: int, base_delay: float = 0.2) -> T:
    """Run ``attempt`` until it succeeds or raises something not :class:`Retryable`; after
    ``max_retries`` retries the last cause is raised. Backoff doubles (capped at 10 s, with
    full jitter), or follows the server's ``Retry-After`` (at most a minute)."""
    for retry in range(max_retries + 1):
        try:
            return await attempt()
        except Retryable as failure:
            if retry == max_retries:
                raise failure.cause from None
            delay = failure.retry_after
            if delay is None:
                delay = random.uniform(0, min(10.0, base_delay * 2**retry))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def error_of(response: httpx.Response) -> BastionaryError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    if not isinstance(error, dict):  # a proxy's or another server's {"error": "Bad Gateway"}
        error = {"message": str(error)}
    code = str(error.get("code", "http_error"))
    message = str(error.get("message", response.text[:200]))
    if code == "rejected_events":
        return EventsRejected(response.status_code, code, message, body)
    return BastionaryError(response.status_code, code, message, body if isinstance(body, dict) else {})


def checked(response: httpx.Response) -> httpx.Response:
    """The response when it succeeded; raises :class:`Retryable` or the API's error."""
    if response.status_code < 400:
        return response
    if response.status_code in RETRY_STATUSES:
        after = response.headers.get("Retry-After") or ""
        # isascii: "²" is a digit to str.isdigit, not a number to float (a ValueError escaped).
        retry_after = float(after) if after.isascii() and after.replace(".", "", 1).isdigit() else None
        if retry_after is not None:
            # A proxy's `Retry-After: 86400` would hold the call (and a tracked batch) for a day.
            retry_after = min(retry_after, MAX_RETRY_AFTER_S)
        raise Retryable(error_of(response), retry_after)
    raise error_of(response)


async def sent(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One attempt of a request: the response when it succeeded, else :class:`Retryable` or the
    API's error. A failed connection or a timeout is :class:`ApiUnreachable` once retries end (a
    read's timeout waiting for its answer at once), never httpx's own error: callers handle one
    family of errors, and need not know httpx."""
    try:
        response = await http.send(http.build_request(method, path, **kwargs), stream=True)
        try:
            await response.aread()
        except httpx.DecodingError as exc:
            # A body its Content-Encoding does not decode (a proxy's): not the API's answer, and
            # asked again it comes back the same. httpx's own error escaped the client.
            message = f"{method} {path}: the answer's body does not decode as its Content-Encoding says: {exc}"
            raise BastionaryError(response.status_code, "invalid_response", message[:500]) from exc
        finally:
            await response.aclose()
    except httpx.TransportError as exc:
        if method == "GET" and isinstance(exc, httpx.ReadTimeout):
            # The API has the read and its query runs on to its end or its limit whoever waits:
            # each retry added one more such query beside it (six for one slow read), and the
            # caller never saw the API's own answer. A write's retry is safe, and kept.
            raise ApiUnreachable(exc) from None
        raise Retryable(ApiUnreachable(exc)) from None
    return checked(response)


class EventSender(Protocol):
    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class HttpSender:
    def __init__(self, http: httpx.AsyncClient, max_retries: int):
        self.http = http
        self.max_retries = max_retries

    async def send(self, events: list[dict[str, Any]]) -> None:
        """Send ``events``; a batch the API finds too large (413: over its body or batch limit)
        is sent again in halves, so only an event too large on its own fails. A member rejected
        in a half is reported at its index in ``events``."""
        try:
            await self._send_whole(events)
            return
        except BastionaryError as refused:
            if refused.status != 413 or len(events) < 2:
                raise
        middle = len(events) // 2
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        for offset, part in ((0, events[:middle]), (middle, events[middle:])):
            try:
                await self.send(part)
                accepted += [str(event["id"]) for event in part]
            except EventsRejected as some:
                accepted += some.accepted
                rejected += [
                    {**r, "index": r["index"] + offset} for r in some.rejected if isinstance(r.get("index"), int)
                ]
            except BastionaryError as refused:
                if refused.status != 413 or len(part) != 1:
                    raise
                # Too large on its own: it fails alone, and the other half is still sent (it
                # failed the whole batch, never sending the other half).
                rejected.append(
                    {"index": offset, "id": part[0].get("id"), "code": refused.code, "message": refused.message}
                )
        if rejected:
            message = f"{len(rejected)} event(s) rejected; the others were accepted"
            body = {"accepted": len(accepted), "ids": accepted, "rejected": rejected}
            raise EventsRejected(400, "rejected_events", message, body)

    async def _send_whole(self, events: list[dict[str, Any]]) -> None:
        body = orjson.dumps(events)  # encoded once: every retry sends the same bytes

        async def attempt() -> httpx.Response:
            return await sent(self.http, "POST", "/v1/events", content=body, headers={"Content-Type": BATCH_TYPE})

        await with_retries(attempt, self.max_retries)

    async def close(self) -> None:
        return None  # the client owns the HTTP connection pool


class KafkaSender:
    """Publishes straight to the usage topic: each customer's events as batch records keyed by
    it, acknowledged by every in-sync replica. A record the producer or the broker finds too
    large is sent again in halves, so only an event too large on its own fails, as over HTTP."""

    def __init__(self, bootstrap: str, topic: str, max_retries: int, timeout: float = 10.0):
        from aiokafka import AIOKafkaProducer

        self.topic = topic
        self.max_retries = max_retries
        # The client's timeout bounds each Kafka request as it bounds each HTTP one: aiokafka's
        # own 40 s held a flush that long per attempt against a broker that did not answer.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, request_timeout_ms=max(1, int(timeout * 1000))
        )
        self._started = False

    async def send(self, events: list[dict[str, Any]]) -> None:
        """Send ``events``; members too large for a record on their own are reported as
        :class:`EventsRejected` at their index in ``events``, after the others were published."""
        from aiokafka.errors import KafkaError

        by_customer: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            by_customer.setdefault(str(event["subject"]), []).append(index)
        members = [orjson.dumps(event) for event in events]
        unsent = [
            _Record(customer.encode(), chunk, members)
            for customer, indexes in by_customer.items()
            for chunk in _record_chunks(indexes, members)
        ]
        too_large: list[_Record] = []

        async def attempt() -> None:
            nonlocal unsent
            if not self._started:
                # Inside the retries: a broker not up yet at the first send is a connection
                # error like any other (it failed the batch at once).
                try:
                    await self._producer.start()
                except KafkaError as exc:
                    raise Retryable(exc) from None
                self._started = True
            unsent, failure = await self._publish(unsent, too_large)
            if failure is not None:
                raise Retryable(failure)

        await with_retries(attempt, self.max_retries)
        if too_large:
            failed = sorted(index for record in too_large for index in record.indexes)
            kept = set(range(len(events))) - set(failed)
            rejected = [
                {
                    "index": index,
                    "id": events[index].get("id"),
                    "code": "record_too_large",
                    "message": f"the event is {len(members[index])} bytes: more than one Kafka record takes",
                }
                for index in failed
            ]
            accepted = [str(event["id"]) for index, event in enumerate(events) if index in kept]
            # As the HTTP path reports a lone event the API refuses as too large (413).
            message = f"{len(rejected)} event(s) rejected; the others were accepted"
            raise EventsRejected(
                400, "rejected_events", message, {"accepted": len(accepted), "ids": accepted, "rejected": rejected}
            )

    async def _publish(
        self, records: list[_Record], too_large: list[_Record]
    ) -> tuple[list[_Record], Exception | None]:
        """Publish ``records``, halving those too large (a lone event too large goes to
        ``too_large``); returns the records still to send and why they were not sent. A record
        too large is never taken, so it is never retried whole (retried, it failed every event
        of the batch, other customers' too, and published the rest again on each retry)."""
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        unsent: list[_Record] = []
        failure: Exception | None = None
        while records:
            halves: list[_Record] = []
            for record, outcome in zip(records, await self._outcomes(records), strict=True):
                if isinstance(outcome, MessageSizeTooLargeError):
                    if len(record.indexes) == 1:
                        too_large.append(record)
                    else:
                        halves += record.halves()
                elif isinstance(outcome, KafkaError):
                    unsent.append(record)
                    failure = outcome
                elif outcome is not None:
                    raise outcome
            records = halves
        return unsent, failure

    async def _outcomes(self, records: list[_Record]) -> list[BaseException | None]:
        """Each record's outcome: None once acknowledged, else its error. Records are queued in
        order (a customer's records share a partition, so their order holds); after a failure
        other than the size, the rest are not tried (each would wait out the same broker)."""
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        outcomes: list[BaseException | None] = []
        queued: list[tuple[int, asyncio.Future[Any]]] = []
        stopped: KafkaError | None = None
        for record in records:
            if stopped is not None:
                outcomes.append(stopped)
                continue
            try:
                queued.append((len(outcomes), await self._producer.send(self.topic, record.value, key=record.key)))
                outcomes.append(None)
            except KafkaError as refused:
                outcomes.append(refused)
                if not isinstance(refused, MessageSizeTooLargeError):
                    stopped = refused
        results = await asyncio.gather(*(future for _, future in queued), return_exceptions=True)
        for (at, _), result in zip(queued, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[at] = result
        return outcomes

    async def close(self) -> None:
        # Also when start() failed: the producer holds a client (and warns "Unclosed") until stopped.
        await self._producer.stop()


# What the producer takes in one record (its max_request_size, 1 MiB) and what the worker's
# record limit (BASTIONARY_MAX_RECORD_BYTES) and Faust's producer (1,000,000) take, less room
# for the key and the record's framing: the same bound the HTTP API cuts its records to.
RECORD_VALUE_BYTES = 1_000_000 - 2_048
# BASTIONARY_MAX_BATCH_EVENTS's default: a batch record holding more is one dead letter.
RECORD_EVENTS = 10_000


class _Record:
    """Some of a customer's events (``indexes`` into the batch) as one record value."""

    def __init__(self, key: bytes, indexes: list[int], members: list[bytes]):
        self.key = key
        self.indexes = indexes
        self._members = members
        self.value = b"[" + b",".join(members[i] for i in indexes) + b"]"

    def halves(self) -> list[_Record]:
        middle = len(self.indexes) // 2
        return [_Record(self.key, part, self._members) for part in (self.indexes[:middle], self.indexes[middle:])]


def _record_chunks(indexes: list[int], members: list[bytes]) -> list[list[int]]:
    """One customer's events as runs, in order, each within a record's bytes and events."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    size = 1  # the brackets, and a comma before each member but the first
    for index in indexes:
        if chunk and (size + len(members[index]) + 1 > RECORD_VALUE_BYTES or len(chunk) == RECORD_EVENTS):
            chunks.append(chunk)
            chunk, size = [], 1
        chunk.append(index)
        size += len(members[index]) + 1
    chunks.append(chunk)
    return chunks
