"""The interpreter hands the GIL over every 1 ms while requests come in and every 20 ms
otherwise; probes do not count as requests (a real aiohttp server and client)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import urllib.parse

import aiohttp
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.worker.switching import PROBE_PATHS, RESPONSIVE_SECONDS, THROUGHPUT_SECONDS, SwitchInterval
from tests.unit.served_apps import served as served_app


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def switch_with_log(hold: float = 2.0) -> tuple[SwitchInterval, FakeClock, list[float]]:
    clock, applied = FakeClock(), []
    return SwitchInterval(hold, clock=clock, apply=applied.append), clock, applied


def test_it_starts_long_goes_short_on_a_request_and_back_once_requests_stop():
    switch, clock, applied = switch_with_log(hold=2.0)
    assert applied == [THROUGHPUT_SECONDS] and not switch.responsive
    switch.request_seen()
    switch.request_seen()  # already short: nothing applied again
    assert applied == [THROUGHPUT_SECONDS, RESPONSIVE_SECONDS]
    clock.now += 1.5
    switch.request_seen()
    clock.now += 1.9
    switch.settle()  # 1.9 s since the last request: still within the hold
    assert switch.responsive
    clock.now += 0.2
    switch.settle()
    switch.settle()
    assert applied == [THROUGHPUT_SECONDS, RESPONSIVE_SECONDS, THROUGHPUT_SECONDS]
    assert not switch.responsive


def test_the_metric_reports_the_interval_in_force():
    from bastionary import metrics

    switch, _, _ = switch_with_log()
    assert metrics.SWITCH_INTERVAL._value.get() == THROUGHPUT_SECONDS
    switch.request_seen()
    assert metrics.SWITCH_INTERVAL._value.get() == RESPONSIVE_SECONDS


def test_settling_with_no_request_ever_seen_changes_nothing():
    switch, clock, applied = switch_with_log()
    clock.now += 1000
    switch.settle()
    assert applied == [THROUGHPUT_SECONDS]


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def served(switch: SwitchInterval) -> contextlib.AbstractAsyncContextManager[str]:
    app = web.Application(middlewares=[switch.middleware()])
    for path in ("/healthz", "/metrics", "/v1/entitlements/check"):
        app.router.add_get(path, ok)
    return served_app(app)


async def test_a_request_shortens_the_interval_and_probes_do_not():
    switch, _, applied = switch_with_log()
    async with served(switch) as base, aiohttp.ClientSession() as session:
        for probe in ("/healthz", "/metrics", "/metrics/"):
            async with session.get(base + probe) as response:
                await response.read()
        assert applied == [THROUGHPUT_SECONDS]
        async with session.get(base + "/v1/entitlements/check") as response:
            assert response.status == 200
        assert applied == [THROUGHPUT_SECONDS, RESPONSIVE_SECONDS]


def test_the_real_interpreter_setting_follows():
    before = sys.getswitchinterval()
    try:
        switch = SwitchInterval(hold_seconds=0.0)
        assert sys.getswitchinterval() == THROUGHPUT_SECONDS
        switch.request_seen()
        assert sys.getswitchinterval() == RESPONSIVE_SECONDS
    finally:
        sys.setswitchinterval(before)


@settings(max_examples=60, deadline=None)
@given(path=st.text(max_size=40))
def test_any_path_is_answered_and_only_probes_leave_the_interval_long(path):
    switch, _, applied = switch_with_log()

    async def request() -> int:
        async with served(switch) as base, aiohttp.ClientSession() as session:
            response = await session.get(base + "/" + urllib.parse.quote(path, safe=""))
            response.release()
            return response.status

    assert asyncio.run(request()) in (200, 404)
    probe = ("/" + path).rstrip("/") in PROBE_PATHS
    assert applied == ([THROUGHPUT_SECONDS] if probe else [THROUGHPUT_SECONDS, RESPONSIVE_SECONDS])
