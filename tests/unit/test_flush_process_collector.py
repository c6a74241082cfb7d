"""The flush process collects garbage between flushes: its young generations after each write,
all of them once a minute, and the allocation-triggered collector only past a plan's size
(metering/flush_process.py, StepCollector)."""

from __future__ import annotations

from bastionary.gc_generations import FULL, FULL_EVERY_SECONDS, YOUNG
from bastionary.metering.flush_process import StepCollector
from bastionary.settings import Settings


class Recorder:
    def __init__(self) -> None:
        self.now = 100.0
        self.calls: list[object] = []

    def clock(self) -> float:
        return self.now

    def collector(self) -> StepCollector:
        return StepCollector(
            clock=self.clock,
            collect=self.calls.append,
            freeze=lambda: self.calls.append("freeze"),
            set_threshold=lambda *thresholds: self.calls.append(thresholds),
        )


def test_starting_collects_everything_freezes_it_and_raises_the_allocation_threshold_past_a_plan():
    recorder = Recorder()
    recorder.collector()
    assert recorder.calls == [FULL, "freeze", (StepCollector.SAFETY_NET, 20, 10)]
    # A plan of the default flush size never starts it: 4 MB of the bench's batch records is
    # about 22,000 events (191 bytes each) at about nine net allocations each, and the net
    # leaves room for events four times as costly.
    events = Settings.model_fields["flush_max_bytes"].default // 191
    assert events * 9 * 4 < StepCollector.SAFETY_NET


def test_each_write_collects_the_young_generations_and_one_a_minute_collects_all_three():
    recorder = Recorder()
    collector = recorder.collector()
    recorder.calls.clear()
    for _ in range(3):
        recorder.now += 10.0
        collector.after_write()
    recorder.now += FULL_EVERY_SECONDS - 30.0
    collector.after_write()
    recorder.now += 1.0
    collector.after_write()
    assert recorder.calls == [YOUNG, YOUNG, YOUNG, FULL, YOUNG]
