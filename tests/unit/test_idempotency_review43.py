"""The billing write API's Idempotency-Key against the README's contract, from a review (the
views with a store and a broker in memory; no broker, no database).

Two first requests racing under one key are one request and its retry: other data is
refused with 422 and published never, the same data is answered with the first's event.
A key that is not UTF-8 is the caller's 400, not a 500.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import orjson
from aiohttp import web
from pydantic import SecretStr

from bastionary.apikeys import KeyRing
from bastionary.storage.idempotency import IdempotencyRecord
from bastionary.worker.api import writes
from bastionary.worker.api.auth import Guard
from tests.unit.served_apps import served

ADMIN = "admin-key-0123456789"
CUSTOMER = {"customer_id": "cust-1", "name": "Acme", "email": "ap@acme.example"}


class SlowIdempotencyStore:
    """``api_idempotency`` in memory, as slow as a round trip: long enough for a second
    request to arrive while the first is between its look-up and its record."""

    def __init__(self) -> None:
        self.records: list[IdempotencyRecord] = []
        self._lock = threading.Lock()

    def first(self, key_name: str, path: str, idempotency_key: str) -> IdempotencyRecord | None:
        time.sleep(0.05)
        with self._lock:
            found = [
                r for r in self.records if (r.key_name, r.path, r.idempotency_key) == (key_name, path, idempotency_key)
            ]
        return min(found, key=lambda r: (r.created_at, r.event_id), default=None)

    def record(self, record: IdempotencyRecord) -> None:
        time.sleep(0.05)
        with self._lock:
            self.records.append(record)


class MemoryBackend:
    def __init__(self) -> None:
        self.idempotency = SlowIdempotencyStore()
        self.published: list[bytes] = []
        self.plans: dict[str, Any] = {}
        topics = SimpleNamespace(customers="billing.customers", payments="billing.payments")
        self.ctx = SimpleNamespace(settings=SimpleNamespace(max_future_skew=timedelta(minutes=5)), topics=topics)

    async def publish(self, topic_name: str, key: str, value: bytes) -> None:
        await asyncio.sleep(0.01)
        self.published.append(value)


class Pages:
    """A stand-in for the Faust app: keeps the views ``install`` registers."""

    def __init__(self) -> None:
        self.views: dict[str, Any] = {}

    def page(self, path: str, name: str | None = None) -> Any:
        def register(view: Any) -> Any:
            self.views[path] = view
            return view

        return register


class Request:
    def __init__(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers
        self._body = body

    async def read(self) -> bytes:
        return self._body


def installed() -> tuple[Pages, MemoryBackend]:
    pages, backend = Pages(), MemoryBackend()
    writes.install(pages, Guard(KeyRing([SecretStr(ADMIN)])), backend, None)  # type: ignore[arg-type]
    return pages, backend


async def post(pages: Pages, path: str, data: dict[str, Any], idempotency_key: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN}", "Idempotency-Key": idempotency_key}
    response = await pages.views[path].post(None, Request(path, orjson.dumps(data), headers))
    return response.status, orjson.loads(response.body)


async def test_a_second_first_request_with_other_data_racing_the_first_is_refused_and_not_published():
    # Both found no record and both were published: the key's "other data is refused" did
    # not hold for the request most likely to reuse a key, a client retrying a slow one.
    pages, backend = installed()
    other = CUSTOMER | {"name": "Other", "email": "other@acme.example"}
    answers = await asyncio.gather(
        post(pages, "/v1/customers", CUSTOMER, "k-1"), post(pages, "/v1/customers", other, "k-1")
    )
    assert sorted(status for status, _ in answers) == [202, 422]
    assert [body["error"]["code"] for status, body in answers if status == 422] == ["idempotency_key_reused"]
    assert len(backend.published) == 1 and len(backend.idempotency.records) == 1
    winner = next(body for status, body in answers if status == 202)
    assert orjson.loads(backend.published[0])["id"] == winner["id"]


async def test_racing_first_requests_with_the_same_data_are_answered_with_one_event():
    # The second is the first's retry: the very event again (same id, same bytes), one record.
    pages, backend = installed()
    answers = await asyncio.gather(*(post(pages, "/v1/customers", CUSTOMER, "k-2") for _ in range(3)))
    assert {status for status, _ in answers} == {202}
    assert len({body["id"] for _, body in answers}) == 1
    assert len(backend.idempotency.records) == 1
    assert len(set(backend.published)) == 1


async def test_requests_under_other_keys_do_not_wait_for_each_other():
    pages, backend = installed()
    started = time.perf_counter()
    answers = await asyncio.gather(*(post(pages, "/v1/customers", CUSTOMER, f"k-{n}") for n in range(4)))
    assert {status for status, _ in answers} == {202}
    assert len(backend.published) == 4
    assert time.perf_counter() - started < 0.35  # four in turn take at least 0.4 s


async def test_an_idempotency_key_that_is_not_utf8_is_a_400_not_an_internal_error():
    # aiohttp passes such header bytes on as lone surrogates; the event id's uuid5 and
    # ClickHouse's parameters could not encode them, and the caller got 500 internal_error.
    pages, backend = installed()
    view = pages.views["/v1/customers"]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await view.post(None, request)

    app = web.Application()
    app.router.add_post("/v1/customers", handler)
    body = orjson.dumps(CUSTOMER)
    async with served(app) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: Bearer {ADMIN}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Idempotency-Key: order-\xff\xfe\r\n\r\n"
            + body
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert orjson.loads(payload)["error"]["code"] == "invalid_idempotency_key"
    assert backend.published == [] and backend.idempotency.records == []
