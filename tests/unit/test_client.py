"""The Python client against a real HTTP peer (an aiohttp server in this process): batches,
linger, retries with the same bytes, what it does with failures and rejections; and its
models against schemas/openapi.yaml."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from aiohttp import web

from bastionary.client import AsyncClient, Client, DeliveryFailed, models
from tests.unit.served_apps import start

DOCUMENT = yaml.safe_load((Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml").read_text())


class Peer:
    """Records every POST /v1/events body; answers from ``script`` (status list), then 202."""

    def __init__(self, script: list[int] | None = None, reject_index: int | None = None):
        self.bodies: list[bytes] = []
        self.script = list(script or [])
        self.reject_index = reject_index
        self.app = web.Application()
        self.app.router.add_post("/v1/events", self.events)
        self.app.router.add_get("/v1/customers/{c}/credits", self.credits)

    async def events(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        assert request.headers["Authorization"] == "Bearer k"
        assert request.headers["Content-Type"] == "application/cloudevents-batch+json"
        if self.script:
            status = self.script.pop(0)
            return web.json_response({"error": {"code": "broker_unavailable", "message": "x"}}, status=status)
        events = orjson.loads(body)
        ids = [e["id"] for e in events]
        if self.reject_index is not None:
            bad = ids[self.reject_index]
            rejected = [{"index": self.reject_index, "id": bad, "code": "future_time", "message": "late"}]
            accepted = [i for i in ids if i != bad]
            error = {"code": "rejected_events", "message": "1 event(s) rejected"}
            answer = {"error": error, "accepted": len(accepted), "ids": accepted, "rejected": rejected}
            return web.json_response(answer, status=400)
        return web.json_response({"accepted": len(ids), "ids": ids}, status=202)

    async def credits(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "customer_id": request.match_info["c"],
                "at": "2026-11-30T00:00:00+00:00",
                "balances": [
                    {"currency": "USD", "promotional": "1.50", "paid": "0", "carried": "0", "available": "1.50"}
                ],
                "grants": [],
            }
        )

    def events_sent(self) -> list[list[str]]:
        return [[e["id"] for e in orjson.loads(body)] for body in self.bodies]


@contextlib.contextmanager
def peer_in_thread(peer: Peer) -> Iterator[str]:
    """The peer on its own event loop in a thread, for the sync client; yields its URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(serve(peer), loop).result()
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
        loop.call_soon_threadsafe(loop.stop)


async def serve(peer: Peer) -> tuple[web.AppRunner, str]:
    return await start(peer.app)


async def test_batches_of_size_then_the_rest_on_flush():
    peer = Peer()
    runner, url = await serve(peer)
    async with AsyncClient(url, api_key="k", batch_size=100, linger=60) as bc:
        ids = [await bc.track_usage("c1", "llm", {"tokens": n}) for n in range(250)]
        await bc.flush()
        assert [len(batch) for batch in peer.events_sent()] == [100, 100, 50]
    assert [i for batch in peer.events_sent() for i in batch] == ids
    assert len(set(ids)) == 250
    await runner.cleanup()


async def test_a_lone_event_leaves_after_the_linger():
    peer = Peer()
    runner, url = await serve(peer)
    async with AsyncClient(url, api_key="k", linger=0.1) as bc:
        await bc.track_usage("c1", "llm", {"tokens": 1}, id="only")
        await asyncio.sleep(0.5)
        assert peer.events_sent() == [["only"]]
    await runner.cleanup()


async def test_a_retry_sends_the_same_bytes():
    peer = Peer(script=[503, 502])
    runner, url = await serve(peer)
    async with AsyncClient(url, api_key="k", linger=0) as bc:
        await bc.track_usage("c1", "llm", {"tokens": 1}, id="e1")
        await bc.flush()
    assert len(peer.bodies) == 3 and len(set(peer.bodies)) == 1
    await runner.cleanup()


async def test_what_fails_every_retry_goes_to_on_error_and_the_next_flush():
    peer = Peer(script=[503] * 10)
    runner, url = await serve(peer)
    failed: list[DeliveryFailed] = []
    bc = AsyncClient(url, api_key="k", linger=0, max_retries=2, on_error=failed.append)
    await bc.track_usage("c1", "llm", {"tokens": 1}, id="e1")
    with pytest.raises(DeliveryFailed) as raised:
        await bc.flush()
    assert [e["id"] for e in raised.value.events] == ["e1"] and len(peer.bodies) == 3
    assert [[e["id"] for e in f.events] for f in failed] == [["e1"]]
    await bc.flush()  # reported once
    await bc.close()
    await runner.cleanup()


async def test_rejected_members_fail_alone_and_are_not_retried():
    peer = Peer(reject_index=1)
    runner, url = await serve(peer)
    bc = AsyncClient(url, api_key="k", linger=60)
    for n in range(3):
        await bc.track_usage("c1", "llm", {"tokens": n}, id=f"e{n}")
    with pytest.raises(DeliveryFailed) as raised:
        await bc.flush()
    assert [e["id"] for e in raised.value.events] == ["e1"] and len(peer.bodies) == 1
    await bc.close()
    await runner.cleanup()


def test_the_sync_client_flushes_on_close_and_reads():
    peer = Peer()
    with peer_in_thread(peer) as url:
        bc = Client(url, api_key="k", linger=60)
        bc.track_usage("c1", "llm", {"tokens": 812}, id="sync-1")
        assert str(bc.credit_balance("c1").balances[0].available) == "1.50"
        assert peer.bodies == []
        bc.close()
        bc.close()
        assert peer.events_sent() == [["sync-1"]]
        with pytest.raises(RuntimeError, match="closed"):
            bc.track_usage("c1", "llm", {})


def test_a_client_needs_exactly_one_destination():
    with pytest.raises(ValueError):
        AsyncClient()
    with pytest.raises(ValueError):
        AsyncClient("http://x", bootstrap="k:9092")


MODEL_SCHEMAS = {
    models.Accepted: "EventsAccepted",
    models.MeterQuery: "MeterQuery",
    models.UsageRow: "UsageRow",
    models.InvoiceSummary: "InvoiceSummary",
    models.InvoiceLine: "InvoiceLine",
    models.Invoice: "Invoice",
    models.UpcomingInvoices: "UpcomingInvoices",
    models.CreditBalance: "CreditBalance",
    models.CreditLedger: "CreditLedger",
    models.Subscriptions: "Subscriptions",
    models.Decision: "Decision",
    models.WriteAccepted: "WriteAccepted",
    models.Customer: "Customer",
    models.CreditNote: "CreditNote",
    models.CreditNoteList: "CreditNoteList",
}


def schema(name: str) -> dict:
    return DOCUMENT["components"]["schemas"][name]


def nested(model: type, field: str) -> type | None:
    """The model a field holds (directly or in a list), if any."""
    for arg in typing.get_args(model.model_fields[field].annotation) or (model.model_fields[field].annotation,):
        if isinstance(arg, type) and issubclass(arg, models._Model):
            return arg
    return None


@pytest.mark.parametrize("model", list(MODEL_SCHEMAS), ids=lambda m: m.__name__)
def test_every_model_has_the_documented_fields(model):
    documented = schema(MODEL_SCHEMAS[model])
    names = {field.alias or name: name for name, field in model.model_fields.items()}
    assert set(names) == set(documented["properties"])
    required = {alias for alias, name in names.items() if model.model_fields[name].is_required()}
    # A field the document requires may be optional here only where a default stands in.
    assert required <= set(documented.get("required", []))
    for alias, name in names.items():
        inner = nested(model, name)
        prop = documented["properties"][alias]
        target = prop.get("items", prop)
        if inner is not None and "properties" in target:
            assert {f.alias or n for n, f in inner.model_fields.items()} == set(target["properties"]), alias


def test_a_sync_call_waits_for_its_answer_not_for_the_linger():
    started = time.monotonic()
    bc = Client("http://127.0.0.1:9", api_key="k", max_retries=0, timeout=2, linger=60)
    try:
        with pytest.raises(Exception):  # noqa: B017 (nothing listens: a connection error)
            bc.credit_balance("c")
    finally:
        bc.close()
    assert time.monotonic() - started < 10


def test_what_waits_is_sent_when_the_program_exits():
    import subprocess
    import sys

    peer = Peer()
    with peer_in_thread(peer) as url:
        program = (
            "from bastionary.client import Client\n"
            f"bc = Client({url!r}, api_key='k', linger=60)\n"
            "bc.track_usage('c1', 'llm', {'tokens': 1}, id='at-exit')\n"
        )  # never closed, never flushed: the linger would hold it a minute
        subprocess.run([sys.executable, "-c", program], check=True, timeout=60, capture_output=True)
        assert peer.events_sent() == [["at-exit"]]


def test_the_sync_client_bounds_what_waits_and_loses_nothing():
    peer = Peer()
    with peer_in_thread(peer) as url:
        with Client(url, api_key="k", batch_size=10, max_pending=20, linger=0.01) as bc:
            ids = [bc.track_usage("c1", "llm", {"n": n}) for n in range(200)]
        sent = peer.events_sent()
        assert [i for batch in sent for i in batch] == ids
        assert max(len(batch) for batch in sent) <= 10


class RoutePeer:
    """Answers every route with the route it matched and the ids it decoded from the path."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        for method, route in [
            ("POST", "/v1/subscriptions/{subscription_id}/cancel"),
            ("POST", "/v1/credit-grants/{grant_id}/void"),
            ("GET", "/v1/customers/{customer_id}/credits"),
        ]:
            self.app.router.add_route(method, route, self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        assert request.match_info.route.resource is not None
        self.seen.append((request.match_info.route.resource.canonical, dict(request.match_info)))
        return web.json_response({"error": {"code": "x", "message": "recorded"}}, status=418)


@pytest.mark.parametrize("identifier", ["../credit-grants/g1/void?", "g1#", "sub/x", "..", ".", "a b+ü%2F"])
async def test_an_id_is_one_path_segment_and_never_reaches_another_route(identifier):
    # Unquoted, cancel_subscription("../credit-grants/<gid>/void?") voided a credit grant.
    peer = RoutePeer()
    runner, url = await start(peer.app)
    bc = AsyncClient(url, api_key="k", max_retries=0)
    try:
        for call in (
            bc.cancel_subscription(identifier, "c1", "2026-01-01T00:00:00Z"),
            bc.void_grant(identifier, "c1"),
            bc.credit_balance(identifier),
        ):
            with contextlib.suppress(Exception):
                await call
    finally:
        await bc.close()
        await runner.cleanup()
    assert peer.seen == [
        ("/v1/subscriptions/{subscription_id}/cancel", {"subscription_id": identifier}),
        ("/v1/credit-grants/{grant_id}/void", {"grant_id": identifier}),
        ("/v1/customers/{customer_id}/credits", {"customer_id": identifier}),
    ]


class OddPeer:
    """What a proxy or another server may answer instead of the API."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/v1/customers/{c}/credits", self.html)
        self.app.router.add_get("/v1/customers/{c}/subscriptions", self.slow)
        self.app.router.add_get("/v1/customers/{c}/credits/ledger", self.string_error)
        self.app.router.add_get("/v1/invoices", self.other_shape)

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>sign in to the proxy</html>", content_type="text/html")

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    async def string_error(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "Bad Request"}, status=400)

    async def other_shape(self, request: web.Request) -> web.Response:
        return web.json_response({"items": []})


async def test_every_failed_call_is_a_bastionary_error_never_httpx_or_json():
    # httpx's ConnectError and ReadTimeout, a JSONDecodeError, a KeyError and an
    # AttributeError escaped the client: a caller handling BastionaryError missed them all.
    from bastionary.client import ApiUnreachable, BastionaryError

    peer = OddPeer()
    runner, url = await start(peer.app)
    calls = [
        ("http://127.0.0.1:9", lambda bc: bc.credit_balance("c"), ApiUnreachable, "api_unreachable", 0),
        (url, lambda bc: bc.subscriptions("c"), ApiUnreachable, "api_unreachable", 0),
        (url, lambda bc: bc.credit_balance("c"), BastionaryError, "invalid_response", 200),
        (url, lambda bc: bc.invoices(), BastionaryError, "invalid_response", 200),
        (url, lambda bc: bc.credit_ledger("c"), BastionaryError, "http_error", 400),
    ]
    try:
        for base, call, kind, code, status in calls:
            async with AsyncClient(base, api_key="k", max_retries=0, timeout=0.5) as bc:
                with pytest.raises(kind) as raised:
                    await call(bc)
                assert (raised.value.code, raised.value.status) == (code, status)
        assert "Bad Request" in str(raised.value)
    finally:
        await runner.cleanup()


async def test_undelivered_events_name_the_unreachable_api_as_their_cause():
    from bastionary.client import ApiUnreachable

    bc = AsyncClient("http://127.0.0.1:9", api_key="k", linger=0, max_retries=0, on_error=lambda failure: None)
    await bc.track_usage("c1", "llm", {"tokens": 1}, id="e1")
    with pytest.raises(DeliveryFailed) as raised:
        await bc.flush()
    assert isinstance(raised.value.cause, ApiUnreachable)
    await bc.close()


def test_the_sync_client_raises_the_same_errors():
    from bastionary.client import ApiUnreachable

    with Client("http://127.0.0.1:9", api_key="k", max_retries=0, timeout=1) as bc, pytest.raises(ApiUnreachable):
        bc.customer("c")


class SizePeer:
    """POST /v1/events as the API limits it: a body over ``limit`` bytes is 413; ``bad`` is rejected."""

    def __init__(self, limit: int, bad: str):
        self.limit = limit
        self.bad = bad
        self.accepted: list[str] = []
        self.app = web.Application(client_max_size=8 * limit)
        self.app.router.add_post("/v1/events", self.events)

    async def events(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(body) > self.limit:
            return web.json_response({"error": {"code": "record_too_large", "message": "too large"}}, status=413)
        events = orjson.loads(body)
        ids = [e["id"] for e in events if e["id"] != self.bad]
        self.accepted += ids
        if len(ids) == len(events):
            return web.json_response({"accepted": len(ids), "ids": ids}, status=202)
        index = [e["id"] for e in events].index(self.bad)
        rejected = [{"index": index, "id": self.bad, "code": "future_time", "message": "late"}]
        error = {"code": "rejected_events", "message": "1 event(s) rejected"}
        return web.json_response({"error": error, "accepted": len(ids), "ids": ids, "rejected": rejected}, status=400)


async def test_a_batch_over_the_size_limit_is_sent_in_parts_and_only_what_cannot_go_fails():
    # 100 events of 12 KB are over the API's 1 MiB: the whole batch was answered 413 and lost.
    peer = SizePeer(limit=1_048_576, bad="e70")
    runner, url = await start(peer.app)
    bc = AsyncClient(url, api_key="k", linger=60, on_error=lambda failure: None)
    try:
        for n in range(100):
            await bc.track_usage("c1", "llm", {"prompt": "x" * 12_000}, id=f"e{n}")
        await bc.track_usage("c1", "llm", {"prompt": "x" * 1_100_000}, id="huge")
        with pytest.raises(DeliveryFailed) as raised:
            await bc.flush()
    finally:
        await bc.close()
        await runner.cleanup()
    assert sorted(e["id"] for e in raised.value.events) == ["e70", "huge"]
    assert sorted(peer.accepted) == sorted(f"e{n}" for n in range(100) if n != 70)


def test_a_servers_retry_after_is_followed_up_to_a_minute():
    import httpx

    from bastionary.client.transport import Retryable, checked

    request = httpx.Request("GET", "http://api/v1/invoices")
    for header, wait in (("2", 2.0), ("86400", 60.0), ("soon", None)):
        response = httpx.Response(503, headers={"Retry-After": header}, request=request)
        with pytest.raises(Retryable) as failure:
            checked(response)
        assert failure.value.retry_after == wait
