"""The worker collects garbage between flushes: young generations after each flush, all of
them once a minute (freezing what survives), the frozen too once an hour, and on a clock when
nothing flushes (worker/collecting.py)."""

from __future__ import annotations

import gc
import weakref

from bastionary.gc_generations import ALLOCATIONS, FULL, YOUNG
from bastionary.metrics import REGISTRY
from bastionary.worker.collecting import BoundaryCollector


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def collector_with_log(allocations: list[int] | None = None) -> tuple[BoundaryCollector, FakeClock, list[object]]:
    """``allocations[0]``: young objects allocated since the last collection (default: enough)."""
    clock, calls = FakeClock(), []
    young = allocations if allocations is not None else [ALLOCATIONS]

    def collect(generation: int) -> int:
        calls.append(generation)
        return 3

    collector = BoundaryCollector(
        full_every_seconds=60.0,
        thaw_every_seconds=3600.0,
        idle_seconds=2.0,
        clock=clock,
        collect=collect,
        freeze=lambda: calls.append("freeze"),
        unfreeze=lambda: calls.append("unfreeze"),
        automatic=lambda on: calls.append(AUTOMATIC_ON if on else AUTOMATIC_OFF),
        young_allocations=lambda: young[0],
    )
    collector.take_over()
    calls.clear()
    return collector, clock, calls


AUTOMATIC_ON, AUTOMATIC_OFF = "allocation-triggered on", "allocation-triggered off"


def test_taking_over_collects_freezes_and_leaves_the_allocation_triggered_collector_on():
    collector, _, calls = collector_with_log()
    collector.take_over()
    assert calls == [FULL, "freeze", AUTOMATIC_ON]


def test_nothing_is_collected_before_taking_over():
    collector, clock, calls = collector_with_log()
    collector.taken_over = False
    clock.now += 10.0
    assert (collector.after_flush(), collector.on_clock(), calls) == (0, 0, [])


def test_each_flush_is_followed_by_a_young_collection_and_a_full_one_comes_once_a_minute():
    collector, clock, calls = collector_with_log()
    collector.after_flush()
    clock.now += 59.0
    collector.after_flush()
    assert calls == [AUTOMATIC_OFF, YOUNG, YOUNG]  # the first landed flush turns it off
    clock.now += 1.0
    collector.after_flush()
    clock.now += 0.5
    collector.after_flush()
    # What survives a full collection is frozen: the next one walks only what aged since.
    assert calls == [AUTOMATIC_OFF, YOUNG, YOUNG, FULL, "freeze", YOUNG]


def test_after_small_flushes_it_collects_as_rarely_as_the_allocation_triggered_collector():
    allocations = [ALLOCATIONS - 1]
    collector, clock, calls = collector_with_log(allocations)
    assert collector.after_flush() == 0
    assert calls == [AUTOMATIC_OFF]
    allocations[0] = ALLOCATIONS
    assert collector.after_flush() == 3
    allocations[0] = 10
    clock.now += 60.0
    collector.after_flush()  # the minute's full collection comes however little was allocated
    assert calls == [AUTOMATIC_OFF, YOUNG, FULL, "freeze"]


def test_while_small_flushes_land_the_clock_leaves_collection_between_flushes():
    allocations = [10]
    collector, clock, calls = collector_with_log(allocations)
    for _ in range(5):  # 2.5 s of small flushes: none collects, and the clock does not either
        clock.now += 0.5
        collector.after_flush()
        assert collector.on_clock() == 0
    assert calls == [AUTOMATIC_OFF]
    clock.now += 2.0
    collector.on_clock()
    assert calls == [AUTOMATIC_OFF, YOUNG, AUTOMATIC_ON]


def test_while_flushes_land_a_young_collection_comes_every_few_seconds_however_little_was_allocated():
    """Reference counting frees each flush's objects, so the net allocation count stays low
    through hours of ingest; without this, nothing would be collected for a minute."""
    allocations = [10]
    collector, clock, calls = collector_with_log(allocations)
    for _ in range(24):  # 12 s of flushes, one every 0.5 s
        clock.now += 0.5
        collector.after_flush()
    assert calls == [AUTOMATIC_OFF] + [YOUNG] * 4  # at 3, 6, 9 and 12 s
    assert collector.young_every_seconds == 3.0


def test_once_an_hour_the_frozen_objects_are_thawed_and_walked_too():
    collector, clock, calls = collector_with_log()
    for _ in range(60):
        clock.now += 60.0
        collector.after_flush()
    assert calls == [AUTOMATIC_OFF] + [FULL, "freeze"] * 59 + ["unfreeze", FULL, "freeze"]
    calls.clear()
    clock.now += 60.0
    collector.after_flush()
    assert calls == [FULL, "freeze"]


def test_once_nothing_has_landed_for_a_while_the_clock_hands_collection_back():
    collector, clock, calls = collector_with_log()
    clock.now += 5.0
    assert collector.on_clock() == 0  # nothing landed yet: the allocation-triggered collector runs
    collector.after_flush()
    clock.now += 1.9
    collector.on_clock()
    assert calls == [AUTOMATIC_OFF, YOUNG]
    clock.now += 0.1
    assert collector.on_clock() == 3  # nothing landed for 2 s: a last collection, and it hands back
    assert calls == [AUTOMATIC_OFF, YOUNG, YOUNG, AUTOMATIC_ON]
    clock.now += 5.0
    assert collector.on_clock() == 0
    collector.after_flush()
    assert calls[-2:] == [AUTOMATIC_OFF, YOUNG]


def test_each_collection_is_on_the_metrics():
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    young_before = sample("bastionary_gc_pause_seconds_count", {"kind": "young"})
    full_before = sample("bastionary_gc_pause_seconds_count", {"kind": "full"})
    unreachable_before = sample("bastionary_gc_unreachable_objects_total")
    all_before = sample("bastionary_gc_pause_seconds_count", {"kind": "all"})
    collector, clock, _ = collector_with_log()
    collector.after_flush()
    clock.now += 60.0
    collector.after_flush()
    clock.now += 3600.0
    collector.after_flush()
    assert sample("bastionary_gc_pause_seconds_count", {"kind": "young"}) == young_before + 1
    assert sample("bastionary_gc_pause_seconds_count", {"kind": "full"}) == full_before + 1
    assert sample("bastionary_gc_pause_seconds_count", {"kind": "all"}) == all_before + 1
    assert sample("bastionary_gc_unreachable_objects_total") == unreachable_before + 9


class Node:
    partner: Node | None = None


def test_between_flushes_only_its_collections_free_a_reference_cycle():
    was_enabled, thresholds = gc.isenabled(), gc.get_threshold()
    collector = BoundaryCollector(young_allocations=lambda: ALLOCATIONS)  # the real collector otherwise
    try:
        collector.take_over()
        assert gc.isenabled() and gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0  # what exists at take-over: no collection walks it
        collector.after_flush()
        assert not gc.isenabled()
        first, second = Node(), Node()
        first.partner, second.partner = second, first
        freed: list[bool] = []
        weakref.finalize(first, freed.append, True)
        del first, second
        for _ in range(100_000):  # allocations that would have started the automatic collector
            _ = [Node()]
        assert freed == []  # reference counting alone never frees a cycle
        assert collector.after_flush() >= 2
        assert freed == [True]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
