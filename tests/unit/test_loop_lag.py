"""The event loop's lag probe: what it observes when nothing holds the loop, and when a
callback does."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bastionary import metrics
from bastionary.worker.loop_lag import probe_loop_lag

BLOCK_SECONDS = 0.3


async def observed_around_a_blocking_callback() -> list[float]:
    observed: list[float] = []
    probe = asyncio.ensure_future(probe_loop_lag(0.01, observed.append))
    await asyncio.sleep(0.05)
    asyncio.get_running_loop().call_soon(time.sleep, BLOCK_SECONDS)  # holds the loop
    await asyncio.sleep(BLOCK_SECONDS + 0.05)
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    return observed


async def test_a_callback_holding_the_loop_shows_as_lag():
    observed = await observed_around_a_blocking_callback()
    assert max(observed) >= BLOCK_SECONDS * 0.5  # the probe woke at least that late
    assert min(observed) >= 0


async def test_the_probe_observes_into_the_workers_histogram_by_default():
    before = metrics.REGISTRY.get_sample_value("bastionary_event_loop_lag_seconds_count") or 0.0
    probe = asyncio.ensure_future(probe_loop_lag(0.01))
    await asyncio.sleep(0.1)
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    after = metrics.REGISTRY.get_sample_value("bastionary_event_loop_lag_seconds_count")
    assert after is not None and after > before
