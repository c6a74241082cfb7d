"""How late the worker's event loop runs: the one place that serves HTTP requests (checks,
the API), Faust's streams and the flush bookkeeping.

A callback that holds the loop, or a thread that holds the interpreter while the loop's
thread waits for it, delays everything queued behind it. A probe asks to wake every
``interval`` seconds and records how much later than asked it woke:
``bastionary_event_loop_lag_seconds``. A check answered slowly with a small lag was slow
elsewhere (its own work, the network, the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bastionary import metrics

PROBE_INTERVAL_SECONDS = 0.1


async def probe_loop_lag(
    interval: float = PROBE_INTERVAL_SECONDS,
    observe: Callable[[float], None] = metrics.EVENT_LOOP_LAG.observe,
) -> None:
    """Run until cancelled, observing each wake-up's lateness in seconds."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - asked))
