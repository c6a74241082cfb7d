"""The Python client against real HTTP peers (aiohttp servers in this process), from the
forty-fifth session's review: answers the API documents that the client refused, a batch
that lost its good events to one too large, event loops left open, Decimals in exponent form."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web

from bastionary.catalog import parse_catalog
from bastionary.client import AsyncClient, Client, DeliveryFailed
from bastionary.entitlements.evaluate import Decision
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.posted import judge_posted
from bastionary.metering.readings import MeterIndex
from tests.unit.served_apps import served


async def test_a_check_without_a_subscription_is_a_denial_not_an_invalid_response():
    """openapi.yaml's Decision has ``type: null`` for a customer with no subscription or a
    feature not in the plan; the client raised ``invalid_response`` for that answer."""

    async def entitlement(request: web.Request) -> web.Response:
        reason = "no_subscription" if request.match_info["c"] == "new" else "not_in_plan"
        return web.json_response(Decision(request.match_info["f"], False, reason=reason).to_json())

    app = web.Application()
    app.router.add_get("/v1/customers/{c}/entitlements/{f}", entitlement)
    async with served(app) as url, AsyncClient(url, api_key="k") as bc:
        unsubscribed = await bc.check("new", "api_calls")
        not_in_plan = await bc.check("cust-1", "sso")
    assert (unsubscribed.has_access, unsubscribed.type, unsubscribed.reason) == (False, None, "no_subscription")
    assert (not_in_plan.has_access, not_in_plan.type, not_in_plan.reason) == (False, None, "not_in_plan")


class SizeLimitedPeer:
    """POST /v1/events answering 413 record_too_large to a body over ``limit`` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.accepted: list[str] = []
        self.app = web.Application(client_max_size=8 * limit)
        self.app.router.add_post("/v1/events", self.events)

    async def events(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(body) > self.limit:
            return web.json_response({"error": {"code": "record_too_large", "message": "too large"}}, status=413)
        ids = [event["id"] for event in orjson.loads(body)]
        self.accepted += ids
        return web.json_response({"accepted": len(ids), "ids": ids}, status=202)


@pytest.mark.parametrize(
    "order", [["huge", "small"], ["small", "huge"], ["a", "huge", "b", "c"]], ids=lambda o: "-".join(o)
)
async def test_an_event_too_large_alone_fails_alone_and_the_rest_of_its_batch_is_sent(order):
    """The lone event's 413 escaped the halving: the other half was never sent (huge first) or
    was reported undelivered though the API had it (huge second)."""
    peer = SizeLimitedPeer(limit=100_000)
    async with served(peer.app) as url:
        bc = AsyncClient(url, api_key="k", linger=60, on_error=lambda failure: None)
        try:
            for event_id in order:
                data = {"prompt": "x" * 200_000} if event_id == "huge" else {"n": 1}
                await bc.track_usage("c1", "llm", data, id=event_id)
            with pytest.raises(DeliveryFailed) as raised:
                await bc.flush()
        finally:
            await bc.close()
    assert [event["id"] for event in raised.value.events] == ["huge"]
    assert raised.value.cause.body["rejected"] == [
        {"index": order.index("huge"), "id": "huge", "code": "record_too_large", "message": "too large"}
    ]
    assert sorted(peer.accepted) == sorted(event_id for event_id in order if event_id != "huge")


def test_a_sync_client_closes_its_event_loop(monkeypatch):
    """Closed, or refused at construction, a Client left its loop open: its selector and
    self-pipe (three descriptors) stayed until the garbage collector found it."""
    loops: list[asyncio.AbstractEventLoop] = []
    new_event_loop = asyncio.new_event_loop

    def recorded() -> asyncio.AbstractEventLoop:
        loops.append(new_event_loop())
        return loops[-1]

    monkeypatch.setattr(asyncio, "new_event_loop", recorded)
    Client("http://127.0.0.1:9", api_key="k").close()
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:9", bootstrap="kafka:9092")
    assert len(loops) == 2
    assert [loop.is_closed() for loop in loops] == [True, True]


async def test_decimals_are_sent_as_plain_decimal_strings():
    """``str(Decimal)`` is ``1E+3`` for Decimal("1E+3") (what ``normalize()`` gives) and ``1E-7``
    for Decimal("0.0000001"): the meter's value rules dead-letter those as invalid_meter_value,
    and the API refuses them as a credit amount."""
    bodies: dict[str, Any] = {}

    async def events(request: web.Request) -> web.Response:
        bodies["events"] = await request.read()
        ids = [event["id"] for event in orjson.loads(bodies["events"])]
        return web.json_response({"accepted": len(ids), "ids": ids}, status=202)

    async def grants(request: web.Request) -> web.Response:
        bodies["grant"] = await request.json()
        return web.json_response({"accepted": True, "id": "ev-1", "type": "bastionary.credit.granted.v1"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/events", events)
    app.router.add_post("/v1/credit-grants", grants)
    async with served(app) as url, AsyncClient(url, api_key="k") as bc:
        for n, tokens in enumerate((Decimal("1E+3"), Decimal("0.0000001"))):
            await bc.track_usage("c1", "llm", {"tokens": tokens}, id=f"e{n}", time="2026-02-28T12:00:00Z")
        await bc.flush()
        await bc.grant_credits("g1", "c1", Decimal(25).scaleb(2), "USD", "2026-02-28T12:00:00Z")

    sent = orjson.loads(bodies["events"])
    assert [event["data"]["tokens"] for event in sent] == ["1000", "0.0000001"]
    meters = MeterIndex(
        parse_catalog(
            {"meters": [{"key": "tokens", "event_type": "llm", "aggregation": "SUM", "value_property": "$.tokens"}]}
        ).meters
    )
    limits = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))
    judged = judge_posted(bodies["events"], True, 1_772_323_200_000, limits, meters)
    assert (judged.accepted, judged.rejected) == (["e0", "e1"], [])
    assert bodies["grant"]["amount"] == "2500"
