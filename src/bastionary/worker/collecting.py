"""The worker's cyclic garbage collector runs between flushes, not in the middle of one.

A flush plan holds a few container objects per event (rows, readings, sightings, rollup
cells), hundreds of thousands in a big flush, for a fraction of a second. None of them is in
a reference cycle, so reference counting frees every one when the plan goes. CPython's
collector, started by allocation counts, walks them anyway, each time the plan's allocations
fill the youngest generation, and every collection stops all threads: checks, heartbeats and
HTTP wait. ``bench --stages``' runner (:func:`bastionary.tools.bench.stages.run_stages_embedded`)
with a gc callback, 220,000 events in 10 flushes, three alternating runs each (2026-12-02):

- started by allocations (the youngest generation every 50,000, as the worker had it): 66
  collections during the flushes, 754-1,147 ms in all, the longest 80-117 ms; 30.9-38.5 us
  per event;
- here: 11 collections, 2 ms in all, the longest 0.2-0.4 ms; 28.5-32.6 us per event.

So the worker turns the automatic collector off and collects here instead: after each flush
has landed and its plan is gone, generations 0 and 1, where only what arrived since (buffered
records, the event loop's objects) is young; every ``full_every_seconds``, all three, so that a
cycle that outlived the younger collections is still freed. A worker that lands nothing (no
usage coming, or billing alone) still collects: a timer calls :meth:`on_clock`, which collects
once no collection has run for ``idle_seconds``. What start-up made lives as long as the
process: frozen, no collection walks it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from bastionary import metrics

YOUNG = 1  # generations 0 and 1
FULL = 2


class BoundaryCollector:
    def __init__(
        self,
        full_every_seconds: float = 60.0,
        idle_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        collect: Callable[[int], int] = gc.collect,
    ):
        self.full_every_seconds = full_every_seconds
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._collect = collect
        self._last = self._last_full = clock()

    def take_over(self) -> None:
        """Freeze what start-up made and stop the automatic collector: from now on this collects."""
        self._collect(FULL)
        gc.freeze()
        gc.disable()
        self._last = self._last_full = self._clock()

    def after_flush(self) -> int:
        """Call once a flush has landed and its plan is released; returns the objects found unreachable."""
        return self._run()

    def on_clock(self) -> int:
        """Call on a timer: collects only if nothing has collected for ``idle_seconds``."""
        return self._run() if self._clock() - self._last >= self.idle_seconds else 0

    def _run(self) -> int:
        now = self._clock()
        generation = FULL if now - self._last_full >= self.full_every_seconds else YOUNG
        started = time.perf_counter()
        unreachable = self._collect(generation)
        metrics.GC_PAUSE_SECONDS.labels("full" if generation == FULL else "young").observe(
            time.perf_counter() - started
        )
        metrics.GC_UNREACHABLE.inc(unreachable)
        self._last = now
        if generation == FULL:
            self._last_full = now
        return unreachable
