"""How often the interpreter hands the GIL between threads: often while requests wait, rarely
while the worker only ingests.

A flush plans and inserts in a thread while the event loop reads records, answers HTTP
requests and sends heartbeats. A short switch interval lets a waiting request in sooner; a
long one spends less on hand-overs between the loop, Faust's consumer thread and the flush.
Measured on the development machine, alternating builds, each phase run alone:

- entitlement checks at 1,000/s on an idle worker, p99: 10.0 and 14.9 ms with 5 ms,
  6.0 and 6.7 ms with 1 ms (``bench --entitlements``, twice each);
- single-event records, no request coming in: 4,256-4,705 records/s with 1 ms against
  4,769-5,303 with 5 ms (four pairs); 5,412 and 5,162 with 5 ms against 6,427 and 5,785
  with 20 ms; 50 ms no better than 20 ms (two pairs each);
- 100-event batch records: 5 ms no different from 1 ms; 18,240 and 19,920 events/s with
  5 ms against 21,020 and 23,059 with 20 ms (two pairs each).

So the worker runs at 20 ms and switches to 1 ms when a request comes in, back to 20 ms once
none has come for ``hold_seconds``. The first request after a quiet spell may wait one long
interval. Health and metrics probes do not count: nobody waits on their answer, and a scrape
every few seconds would keep the short interval for good.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bastionary import metrics

RESPONSIVE_SECONDS = 0.001
THROUGHPUT_SECONDS = 0.02
PROBE_PATHS = frozenset({"/healthz", "/metrics"})


class SwitchInterval:
    def __init__(
        self,
        hold_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        apply: Callable[[float], None] = sys.setswitchinterval,
    ):
        self.hold_seconds = hold_seconds
        self._clock = clock
        self._apply = apply
        self._last_request = float("-inf")
        self.responsive = False
        self._set(THROUGHPUT_SECONDS)

    def _set(self, seconds: float) -> None:
        self._apply(seconds)
        metrics.SWITCH_INTERVAL.set(seconds)

    def request_seen(self) -> None:
        self._last_request = self._clock()
        if not self.responsive:
            self.responsive = True
            self._set(RESPONSIVE_SECONDS)

    def settle(self) -> None:
        """Back to the long interval once requests have stopped (call it on a timer)."""
        if self.responsive and self._clock() - self._last_request > self.hold_seconds:
            self.responsive = False
            self._set(THROUGHPUT_SECONDS)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def responsive_while_requested(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.path.rstrip("/") not in PROBE_PATHS:
                self.request_seen()
            return await handler(request)

        return responsive_while_requested
