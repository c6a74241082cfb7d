"""How tracked events leave the process: over HTTP (``POST /v1/events``) or straight to
Kafka. Both send a batch whole and raise on failure; the batcher decides about retries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from bastionary.client.errors import BastionaryError, EventsRejected

BATCH_TYPE = "application/cloudevents-batch+json"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
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
    full jitter), or follows the server's ``Retry-After``."""
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
        after = response.headers.get("Retry-After")
        retry_after = float(after) if after and after.replace(".", "", 1).isdigit() else None
        raise Retryable(error_of(response), retry_after)
    raise error_of(response)


class EventSender(Protocol):
    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class HttpSender:
    def __init__(self, http: httpx.AsyncClient, max_retries: int):
        self.http = http
        self.max_retries = max_retries

    async def send(self, events: list[dict[str, Any]]) -> None:
        body = orjson.dumps(events)  # encoded once: every retry sends the same bytes

        async def attempt() -> httpx.Response:
            try:
                response = await self.http.post("/v1/events", content=body, headers={"Content-Type": BATCH_TYPE})
            except httpx.TransportError as exc:
                raise Retryable(exc) from None
            return checked(response)

        await with_retries(attempt, self.max_retries)

    async def close(self) -> None:
        return None  # the client owns the HTTP connection pool


class KafkaSender:
    """Publishes straight to the usage topic: one batch record per customer, keyed by it,
    acknowledged by every in-sync replica."""

    def __init__(self, bootstrap: str, topic: str, max_retries: int):
        from aiokafka import AIOKafkaProducer

        self.topic = topic
        self.max_retries = max_retries
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._started = False

    async def send(self, events: list[dict[str, Any]]) -> None:
        from aiokafka.errors import KafkaError

        if not self._started:
            await self._producer.start()
            self._started = True
        by_customer: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_customer.setdefault(str(event["subject"]), []).append(event)

        async def attempt() -> None:
            try:
                pending = [
                    await self._producer.send(self.topic, orjson.dumps(members), key=customer.encode())
                    for customer, members in by_customer.items()
                ]
                await asyncio.gather(*pending)
            except KafkaError as exc:
                raise Retryable(exc) from None

        await with_retries(attempt, self.max_retries)

    async def close(self) -> None:
        if self._started:
            await self._producer.stop()
