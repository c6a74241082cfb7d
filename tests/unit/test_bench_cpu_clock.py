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
    meter = _CpuMeter(SimpleNamespace(_children=[parent]), SimpleNamespace(pid=None))  # type: ignore[arg-type]
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


def test_each_part_s_share_of_a_timed_span_is_read_off_its_own_samples():
    # The worker starts inside the span (absent from the first sample: counted from zero), its
    # flush processes run two cores flat out for two seconds, the broker idles.
    from bastionary.tools.bench.processes import BusySampler

    sampler = BusySampler(cores=2)
    sampler.part_samples = [
        (1.0, {"broker": 5.0}),
        (2.0, {"broker": 5.0, "worker": 0.2, "worker_children": 0.0}),
        (3.0, {"broker": 5.0, "worker": 0.4, "worker_children": 2.0}),
        (4.0, {"broker": 5.0, "worker": 0.6, "worker_children": 4.0}),
    ]
    assert sampler.part_shares(2.0, 4.0) == {"broker": 0.0, "worker": 0.2, "worker_children": 2.0}
    assert sampler.part_shares(1.0, 3.0) == {"broker": 0.0, "worker": 0.2, "worker_children": 1.0}
    assert sampler.part_shares(2.5, 2.9) is None  # no sample inside: nothing to say


def test_the_parts_are_real_processes_read_while_they_run():
    # A real "worker" (this test's child) with a real child of its own spinning a core, and a
    # "broker" that sleeps: the spinning grandchild's CPU is the worker's children's.
    from bastionary.tools.bench.processes import BusySampler, PartsCpu

    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        parts = PartsCpu(sleeper.pid)
        parts.worker_pid = parent.pid
        with BusySampler(interval=0.05, parts=parts) as sampler:
            deadline = time.time() + 20
            while not descendants(parent.pid) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # past the grandchild's start-up: spinning now
            started = time.time()
            time.sleep(0.5)
            ended = time.time()
        shares = sampler.part_shares(started, ended)
        assert shares is not None
        assert set(shares) == {"worker", "worker_children", "broker"}
        assert shares["worker_children"] > 0.5  # spinning, so close to one core
        assert shares["broker"] < 0.2 and shares["worker"] < 0.2
    finally:
        for pid in descendants(parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in (parent, sleeper):
            process.kill()
            process.wait()
