"""What a trial that is not counted reports about the worker: its ``/healthz``, in a line."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.devstack.broker import free_port
from bastionary.tools.bench.entitlements.backlog import _waiting_records
from bastionary.tools.bench.entitlements.freshness import _worker_backlog

BEHIND = {
    "status": "unhealthy",
    "worker_id": "w1",
    "problems": ["usage.events/1: records read 31 s ago have not landed"],
    "partitions": {
        "usage.events/1": {"epoch": 1, "landed_through": 10, "waiting": 123456, "buffered": 800},
        "usage.events/0": {"epoch": 1, "landed_through": 99, "waiting": 0, "buffered": 0},
    },
}


async def backlog_from(report: dict[str, Any] | None) -> str:
    """``_worker_backlog`` against a real HTTP server answering ``report`` (None: no server)."""
    port = free_port()
    runner = None
    if report is not None:
        app = web.Application()
        app.router.add_get("/healthz", lambda _request: web.json_response(report, status=503))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            return await _worker_backlog(session, port)
    finally:
        if runner is not None:
            await runner.cleanup()


def test_a_worker_behind_the_stream_shows_its_waiting_records_and_problems():
    line = asyncio.run(backlog_from(BEHIND))
    assert line == (
        "the worker's /healthz: unhealthy, records waiting to land: usage.events/0 0, usage.events/1 123,456;"
        " usage.events/1: records read 31 s ago have not landed"
    )


def test_a_worker_holding_no_partition_says_so():
    line = asyncio.run(backlog_from({"status": "ok", "worker_id": "w1", "problems": [], "partitions": {}}))
    assert line == "the worker's /healthz: ok, records waiting to land: no partitions"


def test_a_worker_that_does_not_answer_is_said_not_raised():
    assert asyncio.run(backlog_from(None)).startswith(
        "the worker's /healthz gave no answer to read: ClientConnectorError"
    )


def test_an_answer_of_another_shape_is_said_not_raised():
    assert asyncio.run(backlog_from({"unexpected": True})).startswith(
        "the worker's /healthz gave no answer to read: KeyError"
    )


_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_BODIES = st.one_of(
    st.binary(max_size=64),
    _JSON.map(orjson.dumps),
    st.builds(
        lambda status, problems, partitions: orjson.dumps(
            {"status": status, "problems": problems, "partitions": partitions}
        ),
        _JSON,
        _JSON,
        st.dictionaries(st.text(max_size=8), st.dictionaries(st.sampled_from(["waiting", "epoch"]), _JSON), max_size=3),
    ),
)


@settings(max_examples=150, deadline=None)
@given(bodies=st.lists(_BODIES, min_size=1, max_size=5))
def test_whatever_healthz_answers_becomes_a_line_never_an_exception(bodies):
    """And the phase sampler's count is a whole number or None (no report), never an exception."""

    async def scenario() -> list[str]:
        answers = iter(bodies)
        app = web.Application()
        app.router.add_get("/healthz", lambda _request: web.Response(body=next(answers), status=200))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                lines = [await _worker_backlog(session, port) for _ in bodies]
                answers = iter(bodies)  # the same bodies again, for the sampler
                for _ in bodies:
                    waiting = await _waiting_records(session, port)
                    assert waiting is None or type(waiting) is int
                return lines
        finally:
            await runner.cleanup()

    for line in asyncio.run(scenario()):
        assert isinstance(line, str) and line.startswith("the worker's /healthz")
