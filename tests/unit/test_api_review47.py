"""Review 47 of the API's failures and the Python client, against real aiohttp servers: a read
stopped at storage's limits is the caller's 400 (not a 503 retried forever); every failed call
is a BastionaryError, whatever a proxy answers; the async client refuses events after close as
the sync one does; an empty customer= lists no one, not every customer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from clickhouse_connect.driver.exceptions import DatabaseError
from pydantic import SecretStr

from bastionary.apikeys import KeyRing
from bastionary.client import AsyncClient, BastionaryError
from bastionary.worker.api import reads
from bastionary.worker.api.auth import Guard
from bastionary.worker.api.failures import failures_as_json
from tests.unit.served_apps import served
from tests.unit.test_api_review44 import ADMIN, INVOICE_ROW, NOTE_ROW, Routes

# As a real chdb raises them with max_execution_time or max_result_bytes set (clickhouse-connect's chdb:// DSN).
STOPPED_AT_LIMITS = {
    159: "Code: 159. DB::Exception: Timeout exceeded: elapsed 30.0 s, maximum: 30 s. (TIMEOUT_EXCEEDED)",
    396: "Code: 396. DB::Exception: Limit for result exceeded, max bytes: 100.00 MiB. (TOO_MANY_ROWS_OR_BYTES)",
}


@pytest.mark.parametrize("code", sorted(STOPPED_AT_LIMITS))
async def test_a_read_stopped_at_storages_limits_is_the_callers_400_asked_once(code):
    # TIMEOUT_EXCEEDED was a 503 with Retry-After: a client honouring it asked a year of one big
    # customer's minutes again and again, each time for the whole limit; TOO_MANY_ROWS_OR_BYTES
    # was a 500 logged as our bug, and retried too.
    asked: list[str] = []

    async def stopped(request: web.Request) -> web.Response:
        asked.append(request.method)
        raise DatabaseError(STOPPED_AT_LIMITS[code], code=code)

    app = web.Application(middlewares=[failures_as_json])
    app.router.add_get("/v1/meters/{meter}/query", stopped)
    app.router.add_post("/v1/credit-grants", stopped)
    async with served(app) as base, AsyncClient(base, api_key="k", max_retries=3) as bc:
        with pytest.raises(BastionaryError) as raised:
            await bc.usage("llm_tokens", customer="big", window="minute", start="2020-01-01T00:00:00Z")
        assert (raised.value.status, raised.value.code) == (400, "invalid_query")
        assert "narrow from/to" in raised.value.message and asked == ["GET"]

        # Elsewhere a timeout is storage's load, retried as before.
        if code == 159:
            asked.clear()
            http = bc._http
            assert http is not None
            response = await http.post("/v1/credit-grants", content=b"{}")
            assert (response.status_code, response.json()["error"]["code"]) == (503, "unavailable")
            assert response.headers["Retry-After"] == "1"


async def test_every_odd_answer_of_a_proxy_is_a_bastionary_error():
    # A body its Content-Encoding does not decode escaped as httpx.DecodingError, and a
    # Retry-After of "²" (a digit to str.isdigit) as a ValueError from float().
    asked: list[str] = []

    async def bad_gzip(request: web.Request) -> web.Response:
        asked.append("credits")
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=b'{"not": "gzip"}', headers=headers)

    async def odd_retry_after(request: web.Request) -> web.Response:
        asked.append("subscriptions")
        body = {"error": {"code": "unavailable", "message": "busy"}}
        return web.json_response(body, status=503, headers={"Retry-After": "²"})

    app = web.Application()
    app.router.add_get("/v1/customers/{c}/credits", bad_gzip)
    app.router.add_get("/v1/customers/{c}/subscriptions", odd_retry_after)
    async with served(app) as base, AsyncClient(base, api_key="k", max_retries=1) as bc:
        with pytest.raises(BastionaryError) as raised:
            await bc.credit_balance("c1")
        assert (raised.value.status, raised.value.code) == (200, "invalid_response")
        assert "Content-Encoding" in raised.value.message
        with pytest.raises(BastionaryError) as raised:
            await bc.subscriptions("c1")
        assert (raised.value.status, raised.value.code) == (503, "unavailable")
    # Not the API's answer is not asked again; a 503 is, with the client's own backoff.
    assert asked == ["credits", "subscriptions", "subscriptions"]


async def test_the_async_client_refuses_events_after_close_as_the_sync_one_does():
    # It took the event and returned its id; the batcher then failed on the closed connection
    # pool, and only on_error (a log line by default) said the event was lost.
    posted: list[bytes] = []

    async def events(request: web.Request) -> web.Response:
        posted.append(await request.read())
        return web.json_response({"accepted": 1, "ids": ["x"]}, status=202)

    app = web.Application()
    app.router.add_post("/v1/events", events)
    async with served(app) as base:
        failures: list[object] = []
        bc = AsyncClient(base, api_key="k", linger=0, on_error=failures.append)
        await bc.track_usage("c1", "llm", {"tokens": 1}, id="before-close")
        await bc.close()
        with pytest.raises(RuntimeError, match="closed"):
            await bc.track_usage("c1", "llm", {"tokens": 5}, id="after-close")
        await asyncio.sleep(0.1)
    assert len(posted) == 1 and b"before-close" in posted[0] and failures == []


class TwoCustomersReader:
    """ClickHouse for the list views: two entries, of two customers, whatever is asked."""

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        if "count()" in sql:
            return type("Result", (), {"result_rows": [(2,)]})()
        row, at = (INVOICE_ROW, 1) if "FROM invoices" in sql else (NOTE_ROW, 2)
        other = (*row[:at], "cust-other", *row[at + 1 :])
        return type("Result", (), {"result_rows": [row, other]})()


async def test_an_empty_customer_lists_no_one_not_every_customer():
    # A portal on an admin key calling bc.invoices(customer=session_customer) with the id unset
    # ("") listed every customer's invoices: the client dropped customer="", and the API took
    # ?customer= for every customer.
    routes = Routes()
    reads.install(routes, Guard(KeyRing([SecretStr(ADMIN)])), type("Backend", (), {"reader": TwoCustomersReader()})())
    async with served(routes.app) as base, AsyncClient(base, api_key=ADMIN, max_retries=0) as bc:
        for listed in (bc.invoices, bc.credit_notes):
            with pytest.raises(BastionaryError) as raised:
                await listed(customer="")
            assert (raised.value.status, raised.value.code) == (400, "invalid_customer_id")
        http = bc._http
        assert http is not None
        for path in ("/v1/invoices", "/v1/credit-notes", "/v1/meters/m/query"):
            response = await http.get(path, params={"customer": ""})
            assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_customer_id"), path
        # Without customer=, an admin key still lists every customer's.
        assert {entry.customer_id for entry in await bc.invoices()} == {"cust-1", "cust-other"}
