"""An entitlement check taken by a worker that does not own the customer, forwarded to the
owner: what the caller gets when the owner is down, stuck, answers 503 itself, or forwards the
check back. Two real Faust web apps serve the real views on local ports; which worker owns a
customer, and whom the assignment names as owner, are set by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import faust
import pytest
from aiohttp import web
from pydantic import SecretStr
from yarl import URL

from bastionary.apikeys import KeyRing
from bastionary.devstack.broker import free_port
from bastionary.worker.api import entitlements as entitlements_api
from bastionary.worker.api.auth import Guard
from bastionary.worker.api.failures import failures_as_json

from .served_apps import start

KEY = "sk-routing-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


class _Service:
    """Answers every check as granted, naming the worker that answered it."""

    def __init__(self, worker: str):
        self.worker = worker
        self.table = SimpleNamespace(name="entitlements", changelog_topic=None)
        self.features = {"sso"}
        self.asked: list[tuple[str, str]] = []
        self.failure: Exception | None = None

    async def check(self, customer_id: str, feature: str) -> Any:
        self.asked.append((customer_id, feature))
        if self.failure is not None:
            raise self.failure
        answer = {"feature": feature, "has_access": True, "answered_by": self.worker}
        return SimpleNamespace(reason=None, to_json=lambda: answer)

    async def check_all(self, customer_id: str) -> list[Any]:
        return []


@dataclass
class _Worker:
    url: str
    service: _Service
    owns: set[str]
    owner_of: dict[str, str] = field(default_factory=dict)  # the assignment's owner URL per customer


@pytest.fixture
async def workers(monkeypatch) -> AsyncIterator[Callable[[str], Any]]:
    owned: dict[int, set[str]] = {}

    class _Ownership:  # whether this worker holds the customer's partition, as the test sets it
        def __init__(self, app: Any, table: Any):
            self.owns = owned.setdefault(id(app), set())

        def owned_here(self, key: str) -> bool:
            return key in self.owns

        def forget(self) -> None:
            pass

    monkeypatch.setattr(entitlements_api, "PartitionOwnership", _Ownership)
    apps: list[faust.App] = []
    runners: list[web.AppRunner] = []

    async def started(name: str) -> _Worker:
        port = free_port()
        app = faust.App(
            f"routing-{name}",
            broker="kafka://localhost:9",
            canonical_url=f"http://127.0.0.1:{port}",
            web_application_options={"middlewares": [failures_as_json]},
        )
        service = _Service(name)
        entitlements_api.install(app, Guard(KeyRing([SecretStr(KEY)])), service)  # type: ignore[arg-type]
        worker = _Worker(f"http://127.0.0.1:{port}", service, owned[id(app)])

        def key_store(table: str, key: str) -> URL:
            return URL(worker.owner_of[key])  # KeyError: no owner known, as Faust's assignor

        app.router.key_store = key_store  # type: ignore[method-assign]
        runner = web.AppRunner(app.web.web_app)  # type: ignore[attr-defined]
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        apps.append(app)
        runners.append(runner)
        return worker

    yield started
    for app in apps:
        if app._http_client is not None:
            await app._http_client.close()
    for runner in runners:
        await runner.cleanup()


async def _get(url: str, timeout: float = 10) -> tuple[int, str | None, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(URL(url, encoded=True), headers=AUTH) as response,
    ):
        return response.status, response.headers.get("Retry-After"), await response.json(content_type=None)


async def test_a_non_owner_answers_with_the_owners_decision(workers):
    a, b = await workers("a"), await workers("b")
    b.owns.add("team/one")
    a.owner_of["team/one"] = b.url
    status, _, answer = await _get(a.url + "/v1/customers/team%2Fone/entitlements/sso")
    assert (status, answer["answered_by"]) == (200, "b")
    assert b.service.asked == [("team/one", "sso")] and a.service.asked == []


async def test_an_owner_that_is_down_is_a_503_with_retry_after_not_a_500(workers):
    a = await workers("a")
    a.owner_of["c1"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status, retry_after, answer = await _get(a.url + "/v1/customers/c1/entitlements/sso")
    assert (status, retry_after, answer["error"]["code"]) == (503, "1", "unavailable")


async def test_an_owner_that_never_answers_is_a_503_once_the_forward_times_out(workers, monkeypatch):
    monkeypatch.setattr(entitlements_api, "FORWARD_TIMEOUT", aiohttp.ClientTimeout(total=0.5), raising=False)

    released = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(status=204)

    stuck_app = web.Application()
    stuck_app.router.add_get("/{tail:.*}", stuck)
    runner, stuck_url = await start(stuck_app)
    try:
        a = await workers("a")
        a.owner_of["c1"] = stuck_url
        status, retry_after, answer = await asyncio.wait_for(
            _get(a.url + "/v1/customers/c1/entitlements/sso", timeout=30), 10
        )
    finally:
        released.set()
        await runner.cleanup()
    assert (status, retry_after, answer["error"]["code"]) == (503, "1", "unavailable")


async def test_two_workers_that_each_take_the_other_for_owner_answer_503_rather_than_loop(workers):
    a, b = await workers("a"), await workers("b")
    a.owner_of["c1"], b.owner_of["c1"] = b.url, a.url  # mid-rebalance, each with its own view
    status, retry_after, answer = await asyncio.wait_for(
        _get(a.url + "/v1/customers/c1/entitlements/sso", timeout=5), 8
    )
    assert (status, retry_after, answer["error"]["code"]) == (503, "1", "not_ready")
    assert a.service.asked == b.service.asked == []


async def test_the_owners_503_reaches_the_caller_with_its_retry_after(workers):
    a, b = await workers("a"), await workers("b")
    b.owns.add("c1")
    a.owner_of["c1"] = b.url
    b.service.failure = ConnectionRefusedError("ClickHouse refused the connection")
    direct = await _get(b.url + "/v1/customers/c1/entitlements/sso")
    routed = await _get(a.url + "/v1/customers/c1/entitlements/sso")
    assert direct[:2] == routed[:2] == (503, "1")
    assert routed[2]["error"]["code"] == "unavailable"


async def test_a_wrong_key_is_refused_by_the_worker_taking_the_request_before_anything_is_forwarded(workers):
    a, b = await workers("a"), await workers("b")
    b.owns.add("c1")
    a.owner_of["c1"] = b.url
    async with (
        aiohttp.ClientSession() as session,
        session.get(a.url + "/v1/customers/c1/entitlements/sso", headers={"Authorization": "Bearer wrong"}) as answer,
    ):
        assert answer.status == 403
    assert b.service.asked == []


async def test_a_key_asked_mid_rebalance_is_hashed_again_once_the_new_assignment_arrives(monkeypatch):
    from faust.types import TP

    from bastionary.worker.api.owners import PartitionOwnership

    from .test_partition_ownership import TOPIC, _App, _Table

    fake = _App()
    made: list[PartitionOwnership] = []

    def ownership(app: Any, table: Any) -> PartitionOwnership:
        made.append(PartitionOwnership(fake, _Table()))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(entitlements_api, "PartitionOwnership", ownership)
    app = faust.App("routing-rebalance", broker="kafka://localhost:9")
    entitlements_api.install(app, Guard(KeyRing([SecretStr(KEY)])), _Service("a"))  # type: ignore[arg-type]
    (remembered,) = made
    await app.on_partitions_revoked.send(set())  # a rebalance starts
    assert not remembered.owned_here("c1")  # a check meanwhile: hashed over the 4 partitions known then
    fake.producer.partitions = 8  # the rebalance came with more partitions
    fake.assignor.active = {TP(TOPIC, sum(b"c1") % 8)}  # and gave this worker c1's partition of 8
    await app.on_partitions_assigned.send(set())
    assert remembered.owned_here("c1")
