"""The entitlements bench's CPU figures count the worker's children apart from the worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from bastionary.tools.bench.entitlements.cpu import _CpuClock
from bastionary.tools.bench.processes import descendants

# A parent that only waits, and its child that spins: the worker and an examine child.
_PARENT = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while True: pass'])"


def test_the_cpu_of_the_workers_children_is_its_own_figure():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clock = _CpuClock(SimpleNamespace(process=parent))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while not clock.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        figures: dict[str, float] = {}
        with clock.measure(figures):
            time.sleep(1.0)
        assert figures["worker_children_cpu_cores"] > 0.3  # the spinning child (other load shares the cores)
        assert figures["worker_cpu_cores"] < 0.1  # the waiting parent
    finally:
        for pid in clock.children():  # before the parent: an orphan is no longer listed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_a_phase_counts_the_grandchildren_the_bench_started_as_its_own():
    # The bench's child (a worker) starts a child of its own inside the phase (an examining
    # child at the first flush): its CPU is the bench's share, not "other processes".
    from bastionary.tools.bench.processes import _CpuMeter

    parent = subprocess.Popen(
        [sys.executable, "-c", "import time, subprocess, sys; time.sleep(0.3); " + _PARENT.split("; ", 1)[1]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    meter = _CpuMeter(SimpleNamespace(_children=[parent]), SimpleNamespace())  # type: ignore[arg-type]
    spinning: list[int] = []
    try:
        with meter.phase("grandchild"):
            time.sleep(1.5)
            spinning = descendants(parent.pid)
        assert spinning, "the child never started its own"
        figures = meter.phases["grandchild"]
        assert figures["bench_cpu_share"] * meter._cores > 0.3  # about a core's worth, as a share of all cores
    finally:
        for pid in spinning or descendants(parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_the_busy_share_of_a_timed_span_is_read_off_its_own_samples():
    # Start-up idles, the timed span runs a core flat out, teardown idles: the span's share
    # is its own (half of two cores), not the whole run's.
    from bastionary.tools.bench.processes import BusySampler

    sampler = BusySampler(cores=2)
    sampler.samples = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (3.0, 1.0), (4.0, 2.0), (5.0, 2.0), (6.0, 2.0)]
    assert sampler.share(2.0, 4.0) == 0.5
    assert sampler.share(0.0, 6.0) == round(2.0 / (6.0 * 2), 3)
    assert sampler.share(2.5, 2.9) is None  # no sample inside: nothing to say


def test_the_sampler_samples_the_machine_while_it_runs():
    from bastionary.tools.bench.processes import BusySampler

    with BusySampler(interval=0.01) as sampler:
        time.sleep(0.2)
    taken = len(sampler.samples)
    time.sleep(0.05)
    assert taken >= 3 and len(sampler.samples) == taken  # it stopped on leaving
    share = sampler.share(sampler.samples[0][0], sampler.samples[-1][0])
    assert share is not None and 0.0 <= share <= 1.0
