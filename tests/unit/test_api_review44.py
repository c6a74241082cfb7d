"""The API's error surface and list reads against openapi.yaml, from a review (a real aiohttp
server with the API's middleware; ClickHouse is a stand-in that counts what it is asked).

Every error is the documented JSON body, aiohttp's 404 and 405 included; a write whose body
does not decode is 400; the invoice and credit note lists are bounded like the usage query.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bastionary.apikeys import KeyRing
from bastionary.worker.api import reads
from bastionary.worker.api.auth import Guard
from bastionary.worker.api.failures import failures_as_json
from tests.unit.served_apps import served

ADMIN = "admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WHEN = datetime(2026, 11, 1, tzinfo=UTC)
INVOICE_ROW = (
    "inv",
    "cust-1",
    "sub-1",
    "pro",
    "period",
    WHEN,
    WHEN,
    WHEN,
    "USD",
    Decimal(1),
    Decimal(0),
    Decimal(1),
    "x",
)
NOTE_ROW = ("cn", "inv", "cust-1", "issued", "USD", Decimal(1), Decimal(1), Decimal(0), Decimal(1), WHEN, 2)


async def accepted(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"accepted": True}, status=202)


async def test_an_unknown_path_and_a_wrong_method_answer_the_documented_json_error():
    # aiohttp's own "404: Not Found" and "405: Method Not Allowed" were plain text: a client
    # reading the documented {"error": {"code", "message"}} failed on them (the Python client
    # called its own API's answer invalid_response, "not the API's answer").
    app = web.Application(middlewares=[failures_as_json])
    app.router.add_get("/v1/invoices", accepted)
    async with served(app) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v1/invoice", headers=AUTH) as response:
            assert response.status == 404 and response.content_type == "application/json"
            assert (await response.json())["error"]["code"] == "not_found"
        async with session.delete(f"{base}/v1/invoices", headers=AUTH) as response:
            assert response.status == 405 and response.content_type == "application/json"
            assert (await response.json())["error"]["code"] == "method_not_allowed"
            assert "GET" in response.headers["Allow"]


async def test_a_write_body_that_does_not_decode_is_the_senders_400_not_our_500():
    # A write (or dunning response) whose gzip or deflate body was corrupt was a 500
    # internal_error with a traceback, as a bug of ours, and clients retried it as it was.
    app = web.Application(middlewares=[failures_as_json])
    app.router.add_post("/v1/customers", accepted)
    for coding, body in (("gzip", b"not gzip at all"), ("deflate", b"\x00\x01garbage")):
        headers = AUTH | {"Content-Type": "application/json", "Content-Encoding": coding}
        async with (
            served(app) as base,
            aiohttp.ClientSession() as session,
            session.post(f"{base}/v1/customers", data=body, headers=headers) as response,
        ):
            assert response.status == 400, coding
            assert (await response.json())["error"]["code"] == "invalid_encoding"


class CountingReader:
    """ClickHouse for the list views: ``count()`` answers ``rows``, a list query as many rows."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.fetched = 0

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        if "count()" in sql:
            found = [(self.rows,)]
        else:
            found = [INVOICE_ROW if "FROM invoices" in sql else NOTE_ROW] * self.rows
            self.fetched += len(found)
        return type("Result", (), {"result_rows": found})()


class Routes:
    """A stand-in for the Faust app: each view's GET on a real aiohttp router."""

    def __init__(self) -> None:
        self.app = web.Application(middlewares=[failures_as_json])

    def page(self, path: str, name: str | None = None) -> Any:
        def register(view: Any) -> Any:
            async def get(request: web.Request) -> web.StreamResponse:
                return await view.get(View(), request, **request.match_info)

            self.app.router.add_get(path, get)
            return view

        return register


class View:
    def json(self, value: Any, status: int = 200) -> web.Response:
        return web.json_response(value, status=status)


@pytest.mark.parametrize(("path", "listed"), [("/v1/invoices", "invoices"), ("/v1/credit-notes", "credit_notes")])
async def test_a_list_longer_than_the_cap_is_refused_before_any_of_it_is_fetched(monkeypatch, path, listed):
    # An admin key's list of every customer's invoices had no bound: 150,000 invoices were a
    # 47 MB body, built whole in the worker's memory (the usage query stops at 100,000 rows).
    monkeypatch.setattr(reads, "MAX_LIST_ROWS", 3, raising=False)
    for rows, status in ((3, 200), (4, 400)):
        reader, routes = CountingReader(rows), Routes()
        reads.install(routes, Guard(KeyRing([SecretStr(ADMIN)])), type("Backend", (), {"reader": reader})())  # type: ignore[arg-type]
        async with (
            served(routes.app) as base,
            aiohttp.ClientSession() as session,
            session.get(f"{base}{path}", headers=AUTH) as response,
        ):
            answer = await response.json()
        assert response.status == status, answer
        if status == 200:
            assert len(answer[listed]) == rows
        else:
            assert answer["error"]["code"] == "invalid_query" and "customer=" in answer["error"]["message"]
            assert reader.fetched == 0
