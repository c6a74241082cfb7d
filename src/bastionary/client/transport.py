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
        after = response.headers.get("Retry-After")
        retry_after = float(after) if after and after.replace(".", "", 1).isdigit() else None
        if retry_after is not None:
            # A proxy's `Retry-After: 86400` would hold the call (and a tracked batch) for a day.
            retry_after = min(retry_after, MAX_RETRY_AFTER_S)
        raise Retryable(error_of(response), retry_after)
    raise error_of(response)


async def sent(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One attempt of a request: the response when it succeeded, else :class:`Retryable` or the
    API's error. A failed connection or a timeout is :class:`ApiUnreachable` once retries end,
    never httpx's own error: callers handle one family of errors, and need not know httpx."""
    try:
        response = await http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
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
