"""The entitlement bench samples the worker's backlog off ``/healthz`` while a phase runs (a
real aiohttp server standing in for the worker's endpoint)."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
from aiohttp import web

from bastionary.tools.bench.entitlements import backlog
from bastionary.tools.bench.entitlements.figures import _backlog_text
from tests.unit.served_apps import start


def report(*waiting: int) -> dict:
    return {
        "status": "ok",
        "problems": [],
        "partitions": {f"usage.events/{i}": {"waiting": w, "buffered": 0} for i, w in enumerate(waiting)},
    }


async def sample_from(answers: list, monkeypatch: pytest.MonkeyPatch, seconds: float = 0.3) -> dict:
    monkeypatch.setattr(backlog, "SAMPLE_EVERY_S", 0.01)
    cycle = itertools.cycle(answers)

    async def healthz(_request: web.Request) -> web.Response:
        answer = next(cycle)
        if isinstance(answer, bytes):
            return web.Response(body=answer, status=503)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner, base = await start(app)
    into: dict = {}
    try:
        async with (
            aiohttp.ClientSession() as session,
            backlog.sampled_backlog(session, int(base.rsplit(":", 1)[1]), into),
        ):
            await asyncio.sleep(seconds)
    finally:
        await runner.cleanup()
    return into


async def test_the_backlog_is_summed_over_partitions_and_its_peak_kept(monkeypatch):
    into = await sample_from([report(10, 5), report(0, 0), report(100, 2)], monkeypatch)
    assert into["backlog_max_records"] == 102
    assert 0 < into["backlog_mean_records"] < 102
    assert into["backlog_samples_missed"] == 0
    assert "records not yet landed: max 102" in _backlog_text(into)


async def test_an_answer_that_is_no_report_is_counted_as_missed_not_raised(monkeypatch):
    into = await sample_from([b"not json", report(3), {"partitions": {"p": {}}}, b""], monkeypatch)
    assert into["backlog_max_records"] == 3
    assert into["backlog_samples_missed"] >= 3
    assert "samples missed" in _backlog_text(into)


async def test_no_sample_at_all_says_so(monkeypatch):
    into = await sample_from([b"{}"], monkeypatch, seconds=0.05)
    assert into["backlog_max_records"] is None
    assert into["backlog_mean_records"] is None
    assert into["backlog_samples_missed"] >= 1
    assert _backlog_text({}) == ""
