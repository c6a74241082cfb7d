"""Review 47 of slow reads: the Python client waits for a slow read's own answer and never asks a
timed-out read again (against a real aiohttp server), and the API's reader on chdb in the
worker's process has the gateway readers' limits, on connections of its own (chdb in a child
process: one database directory per process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from bastionary.client import ApiUnreachable, AsyncClient, BastionaryError, async_client
from tests.unit.served_apps import served

ROOT = Path(__file__).resolve().parents[2]
STOPPED = {"error": {"code": "invalid_query", "message": "stopped at its limit: narrow from/to"}}


class SlowApi:
    """A read that answers after ``seconds`` (as the API does once ClickHouse stops its query),
    and a write slow the first time only; counts what it was asked."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.asked: list[str] = []
        self.idempotency_keys: list[str] = []
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def read(self, request: web.Request) -> web.Response:
        await self._slow(request.method)
        return web.json_response(STOPPED, status=400)

    async def write(self, request: web.Request) -> web.Response:
        self.idempotency_keys.append(request.headers["Idempotency-Key"])
        if len(self.idempotency_keys) == 1:
            await self._slow(request.method)
        return web.json_response({"accepted": True, "id": "g1", "type": "bastionary.credit.granted.v1"})

    async def _slow(self, method: str) -> None:
        self.asked.append(method)
        self.running += 1
        self.idle.clear()
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
            if not self.running:
                self.idle.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/customers/{c}/credits/ledger", self.read)
        app.router.add_post("/v1/credit-grants", self.write)
        return app


async def test_by_default_a_read_waits_past_the_apis_query_limit_for_its_own_answer(monkeypatch):
    # Scaled down: the client's default 10 s timeout against the API's 30 s query limit. The read
    # timed out and was asked again five times, up to three at once on the server, and the caller
    # got api_unreachable instead of the API's 400 saying how to narrow the query.
    monkeypatch.setattr(async_client, "TIMEOUT_S", 0.2)
    api = SlowApi(0.8)
    async with served(api.app()) as base, AsyncClient(base, api_key="k", max_retries=5) as bc:
        with pytest.raises(BastionaryError) as raised:
            await bc.credit_ledger("big")
        await asyncio.wait_for(api.idle.wait(), 5)
    assert (raised.value.status, raised.value.code) == (400, "invalid_query")
    assert api.asked == ["GET"]


async def test_a_read_that_times_out_is_not_asked_again_and_a_write_is():
    api = SlowApi(0.8)
    async with served(api.app()) as base, AsyncClient(base, api_key="k", timeout=0.2, max_retries=5) as bc:
        with pytest.raises(ApiUnreachable) as raised:
            await bc.credit_ledger("big")
        assert (raised.value.status, raised.value.code) == (0, "api_unreachable")
        assert api.asked == ["GET"]

        # A write's retry carries its Idempotency-Key: asked again, it is one write.
        accepted = await bc.grant_credits("g1", "c", "10", "USD", "2026-12-01T00:00:00Z")
        assert accepted.accepted and api.asked == ["GET", "POST"]
        assert len(api.idempotency_keys) == 2 and len(set(api.idempotency_keys)) == 1
        await asyncio.wait_for(api.idle.wait(), 5)


_IN_PROCESS_READER = r"""
import json, os, sys, tempfile, threading, time

os.environ["BASTIONARY_DATA_DIR"] = tempfile.mkdtemp()
os.environ["BASTIONARY_QUERY_TIMEOUT"] = "PT1S"
os.environ["BASTIONARY_QUERY_MAX_RESULT_BYTES"] = "100000"

from bastionary.runtime import connect_clickhouse
from bastionary.settings import Settings
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.worker.api.reads import listed_count
from bastionary.worker.run import api_reader

settings = Settings()
handle = connect_clickhouse(settings, role="writer")
ClickHouseUsageStore(handle.client).migrate()
reader = api_reader(settings, handle)
out = {"own_client": reader is not handle.client}
SLOW = "SELECT sleepEachRow(0.5) FROM numbers(8) SETTINGS max_block_size = 1"


def outcome(sql):
    started = time.monotonic()
    try:
        rows = reader.query(sql).result_rows
        return {"rows": len(rows), "seconds": time.monotonic() - started}
    except Exception as exc:
        return {"code": getattr(exc, "code", None), "seconds": time.monotonic() - started}


out["slow"] = outcome(SLOW)
out["after_slow"] = listed_count(reader, "invoices", "c1")
# Limits are checked between blocks: a result of one block passes whole.
out["large"] = outcome("SELECT repeat('x', 1000) FROM numbers(1000) SETTINGS max_block_size = 10")
out["after_large"] = reader.query("SELECT 'its own answer'").result_rows

slow = threading.Thread(target=outcome, args=(SLOW,))
slow.start()
time.sleep(0.2)
started = time.monotonic()
handle.client.query("SELECT 1")
out["writer_waited"] = time.monotonic() - started
slow.join()
reader.close()
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)  # past chdb's teardown
"""


def test_the_apis_reader_on_chdb_in_the_process_has_the_gateways_limits_on_connections_of_its_own():
    # It read through the writer's own client: no BASTIONARY_QUERY_TIMEOUT (the 4 s read ran to
    # its end) or BASTIONARY_QUERY_MAX_RESULT_BYTES (1 MB answered whole), and the writer's
    # queries (flushes, billing) waited behind a slow read for the client's lock.
    done = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS_READER], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["own_client"]
    assert out["slow"]["code"] == 159 and out["slow"]["seconds"] < 3  # TIMEOUT_EXCEEDED
    assert out["large"]["code"] == 396  # TOO_MANY_ROWS_OR_BYTES
    # chdb hands what a stopped query produced to its connection's next query: a read after one
    # gets its own answer only because the connection was dropped.
    assert out["after_slow"] == 0
    assert out["after_large"] == [["its own answer"]]
    assert out["writer_waited"] < 1
