"""CPU seconds of the worker and of the bench process, for per-check figures."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

from bastionary.tools.bench.entitlements.figures import Figures
from bastionary.tools.bench.processes import cpu_seconds_of, descendants
from bastionary.tools.bench.stack import _Worker


class _CpuClock:
    """CPU seconds of the worker process and of this (the bench) process, for per-check figures."""

    def __init__(self, worker: _Worker):
        self.pid = worker.process.pid

    def worker(self) -> float:
        return self._seconds(self.pid)

    def children(self) -> dict[int, float]:
        """CPU seconds of each live process the worker started (flush processes,
        ``EXAMINE_PROCESSES`` and their multiprocessing resource tracker): work taken off the
        worker, reported beside its own (``worker_cpu_ms_per_check`` counts the worker alone)."""
        return {pid: self._seconds(pid) for pid in descendants(self.pid)}

    @staticmethod
    def _seconds(pid: int) -> float:
        try:
            return cpu_seconds_of(pid)
        except OSError:
            return float("nan")

    @contextlib.contextmanager
    def measure(self, into: Figures, checks: int | None = None) -> Iterator[None]:
        wall, worker, children, ours = time.monotonic(), self.worker(), self.children(), time.process_time()
        yield
        seconds = max(time.monotonic() - wall, 1e-6)
        used = self.worker() - worker
        # A child started during the measure counts whole; one that exited during it is lost.
        by_children = sum(
            spent - children.get(pid, 0.0) for pid, spent in self.children().items() if not math.isnan(spent)
        )
        into["worker_cpu_cores"] = round(used / seconds, 2)
        into["worker_children_cpu_cores"] = round(by_children / seconds, 2)
        into["bench_cpu_cores"] = round((time.process_time() - ours) / seconds, 2)
        count = into.get("requests", checks)
        if count:
            into["worker_cpu_ms_per_check"] = round(1000 * used / count, 3)
