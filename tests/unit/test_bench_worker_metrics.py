"""The entitlement bench reads the worker's figures off ``/metrics`` (a real aiohttp server
answering a real Prometheus exposition): the flushes between two readings, their mean and the
bucket of the slowest, and how late the event loop woke its probe."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bastionary.devstack.broker import free_port
from bastionary.tools.bench.entitlements.figures import _loop_lag_text
from bastionary.tools.bench.entitlements.worker_metrics import _flush_delta, _loop_lag_delta, _worker_readings
from tests.unit.served_apps import start


def worker_registry() -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    flushes = Histogram("bastionary_usage_flush_seconds", "flushes", buckets=(0.1, 0.5, 1.0), registry=registry)
    other = Counter("bastionary_usage_flush_other", "a metric the bench does not read", registry=registry)
    return registry, flushes, other


def lag_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("bastionary_event_loop_lag_seconds", "lag", buckets=(0.001, 0.01, 0.1, 1.0), registry=registry)


async def readings(registry: CollectorRegistry, between: list) -> tuple[dict, dict]:
    app = web.Application()

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app.router.add_get("/metrics", metrics)
    runner, base = await start(app)
    port = int(base.rsplit(":", 1)[1])
    try:
        async with aiohttp.ClientSession() as session:
            before = await _worker_readings(session, port)
            for step in between:
                step()
            return before, await _worker_readings(session, port)
    finally:
        await runner.cleanup()


async def test_the_delta_counts_the_flushes_between_the_readings():
    registry, flushes, other = worker_registry()
    flushes.observe(0.3)  # before the first reading: not counted
    before, after = await readings(
        registry, [lambda: flushes.observe(0.2), lambda: flushes.observe(0.4), lambda: other.inc(5)]
    )
    assert _flush_delta(before, after) == {"flushes": 2, "flush_mean_s": 0.3, "flush_p99_at_most_s": 0.5}


async def test_no_flush_between_the_readings_reports_none_and_no_server_reports_nothing():
    registry, _, _ = worker_registry()
    before, after = await readings(registry, [])
    assert _flush_delta(before, after) == {"flushes": 0}
    async with aiohttp.ClientSession() as session:
        assert await _worker_readings(session, free_port()) == {}


async def test_the_loop_lag_between_the_readings_and_none_from_a_worker_without_the_probe():
    registry, _, _ = worker_registry()
    before, after = await readings(registry, [])
    assert _loop_lag_delta(before, after) == {}
    lag = lag_histogram(registry)
    lag.observe(5.0)  # before the first reading, and past the last finite bucket: not counted
    steps = [lambda: lag.observe(0.0005) for _ in range(98)] + [lambda: lag.observe(0.05), lambda: lag.observe(0.5)]
    before, after = await readings(registry, steps)
    figures = _loop_lag_delta(before, after)
    assert figures == {
        "loop_lag_probes": 100,
        "loop_lag_mean_ms": round(1000 * (98 * 0.0005 + 0.05 + 0.5) / 100, 2),
        "loop_lag_p99_at_most_ms": 100.0,
    }
    assert "p99 <= 100.0 ms (100 probes)" in _loop_lag_text(figures)
    assert _loop_lag_text({}) == ""
    before, after = await readings(registry, [lambda: lag.observe(5.0)])
    assert _loop_lag_delta(before, after)["loop_lag_p99_at_most_ms"] is None  # beyond the last bucket


_METRIC_LINES = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda name, value: f"{name} {value}",
        st.sampled_from(
            [
                "bastionary_usage_flush_seconds_count",
                'bastionary_usage_flush_seconds_bucket{le="0.5"}',
                "bastionary_event_loop_lag_seconds_sum",
                'bastionary_event_loop_lag_seconds_bucket{le="+Inf"}',
                "bastionary_event_loop_lag_seconds_bucket",
            ]
        ),
        st.one_of(st.floats(allow_nan=True).map(str), st.text(max_size=6)),
    ),
)


@settings(max_examples=100, deadline=None)
@given(before=st.lists(_METRIC_LINES, max_size=6), after=st.lists(_METRIC_LINES, max_size=6))
def test_whatever_metrics_answers_the_deltas_come_back_as_figures_never_an_exception(before, after):
    async def scenario() -> tuple[dict, dict]:
        bodies = iter(["\n".join(before), "\n".join(after)])
        app = web.Application()
        app.router.add_get("/metrics", lambda _request: web.Response(text=next(bodies)))
        runner, base = await start(app)
        try:
            async with aiohttp.ClientSession() as session:
                port = int(base.rsplit(":", 1)[1])
                return await _worker_readings(session, port), await _worker_readings(session, port)
        finally:
            await runner.cleanup()

    first, second = asyncio.run(scenario())
    assert all(isinstance(v, float) for v in [*first.values(), *second.values()])
    for figures in (_flush_delta(first, second), _loop_lag_delta(first, second)):
        assert isinstance(figures, dict)
