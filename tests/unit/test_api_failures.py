"""A request that fails past its view still answers JSON: 503 for storage or broker trouble,
500 for a bug, 413 for a body over the limit (a real aiohttp server and client)."""

from __future__ import annotations

import contextlib

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka.errors import KafkaConnectionError
from clickhouse_connect.driver.exceptions import OperationalError

from bastionary.worker.api.failures import failures_as_json
from tests.unit.served_apps import events_view
from tests.unit.served_apps import served as served_app


async def failing(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "clickhouse":
        raise OperationalError("connection refused")
    if kind == "kafka":
        raise KafkaConnectionError()
    if kind == "bug":
        raise KeyError("oops")
    await request.read()
    return web.json_response({"ok": True})


def served(**options) -> contextlib.AbstractAsyncContextManager[str]:
    """``failing`` behind the middleware on a real port; yields its base URL."""
    app = web.Application(middlewares=[failures_as_json], **options)
    app.router.add_post("/{kind}", failing)
    return served_app(app)


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("clickhouse", 503, "unavailable"), ("kafka", 503, "unavailable"), ("bug", 500, "internal_error")],
)
async def test_failures_answer_json(kind, status, code):
    async with served(client_max_size=1000) as base, aiohttp.ClientSession() as session:
        async with session.post(f"{base}/{kind}", data=b"{}") as response:
            assert (response.status, (await response.json())["error"]["code"]) == (status, code)
            assert (response.headers.get("Retry-After") is not None) == (status == 503)
        async with session.post(f"{base}/fine", data=b"x" * 5000) as response:
            assert (response.status, (await response.json())["error"]["code"]) == (413, "record_too_large")


async def test_every_answer_is_counted_by_its_route_template():
    from bastionary import metrics

    def seen(route: str, method: str, status: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "bastionary_api_request_seconds_count", {"route": route, "method": method, "status": status}
        )
        return value or 0.0

    before = seen("/{kind}", "POST", "200"), seen("/{kind}", "POST", "503"), seen("unmatched", "GET", "404")
    async with served() as base, aiohttp.ClientSession() as session:
        for path in ("/fine", "/other", "/clickhouse"):
            async with session.post(f"{base}{path}", data=b"{}") as response:
                await response.read()
        async with session.get(f"{base}/a/b/c") as response:
            assert response.status == 404
    after = seen("/{kind}", "POST", "200"), seen("/{kind}", "POST", "503"), seen("unmatched", "GET", "404")
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]


async def posted_through(broker: object) -> web.Response:
    """``POST /v1/events`` answered by the events view over ``broker``: the view alone,
    without a server."""

    class Request:
        def __init__(self):
            self.headers = {"Content-Type": "application/cloudevents+json"}

        async def read(self):
            return b"{}"

    return await events_view(broker).post(None, Request())


async def test_a_broker_that_does_not_take_posted_events_answers_503_with_retry_after():
    """openapi.yaml's 503 (ServiceUnavailable) promises Retry-After for broker_unavailable too."""

    class DownBroker:
        async def post_usage(self, body, batch, customer):
            raise KafkaConnectionError()

    response = await posted_through(DownBroker())
    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0


async def test_events_the_broker_cannot_take_for_their_size_answer_413_not_a_retried_503():
    """A body within BASTIONARY_MAX_RECORD_BYTES (1 MiB) whose record is over the producer's
    1,000,000 bytes was answered 503 broker_unavailable, which a client retries for ever."""
    from aiokafka.errors import MessageSizeTooLargeError

    class SmallBroker:
        async def post_usage(self, body, batch, customer):
            raise MessageSizeTooLargeError("The message is 1040000 bytes when serialized")

    response = await posted_through(SmallBroker())
    assert response.status == 413 and "Retry-After" not in response.headers
    assert orjson.loads(response.body)["error"]["code"] == "record_too_large"
