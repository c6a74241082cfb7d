"""The worker's cyclic garbage collector runs between flushes, not in the middle of one.

A flush plan holds a few container objects per event (rows, readings, sightings, rollup
cells), hundreds of thousands in a big flush, for a fraction of a second. None of them is in
a reference cycle, so reference counting frees every one when the plan goes. CPython's
collector, started by allocation counts, walks them anyway, each time the plan's allocations
fill the youngest generation, and every collection stops all threads: checks, heartbeats and
HTTP wait. ``bench --stages``' runner (:func:`bastionary.tools.bench.stages.run_stages_alone`)
with a gc callback, 220,000 events in 10 flushes, three alternating runs each (2026-12-02):

- started by allocations (the youngest generation every 50,000, as the worker had it): 66
  collections during the flushes, 754-1,147 ms in all, the longest 80-117 ms; 30.9-38.5 us
  per event;
- here: 11 collections, 2 ms in all, the longest 0.2-0.4 ms; 28.5-32.6 us per event.

So the worker turns the automatic collector off and collects here instead, at flush
boundaries, where only what arrived since the last flush (buffered records, the event loop's
objects) is young:

- after a flush has landed and its plan is gone, once 50,000 objects have been allocated
  (net) since the last collection: generations 0 and 1 (``young``). A big flush is followed by
  one, never interrupted by one; small flushes collect no more often than the
  allocation-triggered collector would, or than ``young_every_seconds`` (below). (Collecting
  after every flush of ``bench --entitlements``, about 3,000 events four times a second, gave
  a freshness p99 of 0.96-2.76 s in eight runs, against 0.94-1.18 s in five on be54771.)
- while flushes land, at least every ``young_every_seconds`` a young collection, however
  little was allocated (net). Reference counting frees a flush's objects, so the net count
  stays low through sustained ingest, and without this nothing at all was collected for
  ``full_every_seconds``. In the bench's rss-http phase (1M distinct ids at 39,000-54,000
  events/s, ClickHouse over HTTP, 2026-12-04) the worker's peak RSS was 650-724 MB in 13
  runs with no collection during the ingest, and 427-463 MB in 8 with one every 3 s (of
  generation 0, 0-1 or all). Those collections found 8-20 unreachable objects each
  (clickhouse-connect's insert contexts, about 10 KB in all): what they free is not the
  memory. The likeliest reading, not proven: such garbage, left among a flush's short-lived
  objects, keeps pymalloc pools and arenas from emptying, so the next flush takes fresh ones.
- every ``full_every_seconds``: all three (``full``), so that a cycle that outlived the young
  collections is still freed. What survives it is frozen, so the next one walks only what
  became old since (in ``bench --entitlements``' worker, 7.5-14.9 ms, against 297.7 ms for
  the first one over everything);
- every ``thaw_every_seconds``: the frozen objects are thawed first (``all``), so that a cycle
  among them is freed within the hour, at the cost of one collection over everything.

While nothing lands, no plan is alive and there is nothing to gain. With the automatic
collector off throughout, ``bench --entitlements``' idle phase (checks, no usage) had a p99 of
13.9-29.4 ms in five runs, against 4.9-8.7 ms in the three runs with it alternated with them
(two later ones with it gave 29.8 and 44.0 ms on a noisier machine); a run that logged every
collection over 2 ms found none in that phase, so the cause is not pinned down. So
:meth:`on_clock`, called on a timer, hands collection back to the allocation-triggered
collector (the youngest generation every 50,000 allocations) once nothing has landed for
``idle_seconds``, and the next landed flush takes it over again. The worker's timer takes over
on its first tick, once the app has started, so what start-up made is frozen with it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from bastionary import metrics
from bastionary.gc_generations import ALLOCATIONS, FULL, FULL_EVERY_SECONDS, YOUNG, collect_every


def automatic_collection(on: bool) -> None:
    """The allocation-triggered collector, on (the youngest generation every 50,000
    allocations, not 700) or off."""
    if on:
        collect_every(ALLOCATIONS)
        gc.enable()
    else:
        gc.disable()


class BoundaryCollector:
    def __init__(
        self,
        full_every_seconds: float = FULL_EVERY_SECONDS,
        young_every_seconds: float = 3.0,
        thaw_every_seconds: float = 3600.0,
        idle_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        collect: Callable[[int], int] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        automatic: Callable[[bool], None] = automatic_collection,
        young_allocations: Callable[[], int] = lambda: gc.get_count()[0],
    ):
        self.full_every_seconds = full_every_seconds
        self.young_every_seconds = young_every_seconds
        self.thaw_every_seconds = thaw_every_seconds
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._collect = collect
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._automatic = automatic
        self._young_allocations = young_allocations
        self.taken_over = False
        self.between_flushes = False  # else the allocation-triggered collector runs
        self._last_full = self._last_thaw = self._last_landed = self._last_collection = clock()

    def take_over(self) -> None:
        """Freeze what exists now; from now on this decides when collections run."""
        self._collect(FULL)
        self._freeze()
        self._automatic(True)
        self.taken_over = True
        self._last_full = self._last_thaw = self._last_collection = self._clock()

    def after_flush(self) -> int:
        """Call once a flush has landed and its plan is released; returns the objects found
        unreachable (0, collecting nothing, before :meth:`take_over`)."""
        if not self.taken_over:
            return 0
        self._last_landed = now = self._clock()
        if not self.between_flushes:
            self._automatic(False)
            self.between_flushes = True
        if (
            self._young_allocations() < ALLOCATIONS
            and now - self._last_collection < self.young_every_seconds
            and now - self._last_full < self.full_every_seconds
        ):
            return 0  # small flushes: no more collections than the allocation-triggered collector would run
        return self._run()

    def on_clock(self) -> int:
        """Call on a timer: once nothing has landed for ``idle_seconds``, a last collection,
        and the allocation-triggered collector takes over again."""
        if not (self.between_flushes and self._clock() - self._last_landed >= self.idle_seconds):
            return 0
        unreachable = self._run()
        self._automatic(True)
        self.between_flushes = False
        return unreachable

    def _run(self) -> int:
        now = self._last_collection = self._clock()
        started = time.perf_counter()
        if now - self._last_full < self.full_every_seconds:
            kind, unreachable = "young", self._collect(YOUNG)
        else:
            kind = "full"
            if now - self._last_thaw >= self.thaw_every_seconds:
                kind = "all"
                self._unfreeze()
                self._last_thaw = now
            unreachable = self._collect(FULL)
            self._freeze()  # what survived is old: the next full collection walks only what aged since
            self._last_full = now
        metrics.GC_PAUSE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        metrics.GC_UNREACHABLE.inc(unreachable)
        return unreachable
