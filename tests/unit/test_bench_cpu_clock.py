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
