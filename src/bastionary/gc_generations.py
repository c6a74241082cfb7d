"""CPython's cyclic garbage collector as the worker's processes set it.

The worker (:mod:`bastionary.worker.collecting`), its flush processes
(:mod:`bastionary.metering.flush_process`) and its examine processes
(:mod:`bastionary.metering.examine_pool`) each decide when their collections run, for reasons
their modules give; what they share is here, so that one change reaches all of them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

YOUNG = 1  # gc.collect(YOUNG): generations 0 and 1
FULL = 2  # gc.collect(FULL): all three

# Net allocations that start a young collection where the collector runs by itself: CPython's
# 700 walks a flush's short-lived objects dozens of times per thousand events.
ALLOCATIONS = 50_000

# Where collections run by hand, between flushes: how often all three generations go, so that a
# cycle among older objects is freed within a minute.
FULL_EVERY_SECONDS = 60.0


def collect_every(
    allocations: int = ALLOCATIONS, set_threshold: Callable[[int, int, int], None] = gc.set_threshold
) -> None:
    """The allocation-triggered collector starts a young collection every ``allocations`` net
    allocations; generation 1 every 20 of those, generation 2 every 10 of generation 1's."""
    set_threshold(allocations, 20, 10)
