"""CPU seconds of the worker and of the bench process, for per-check figures."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bastionary.tools.bench.entitlements.figures import Figures
from bastionary.tools.bench.stack import _Worker


class _CpuClock:
    """CPU seconds of the worker process and of this (the bench) process, for per-check figures."""

    def __init__(self, worker: _Worker):
        self.pid = worker.process.pid
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def worker(self) -> float:
        try:
            fields_ = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields_[11]) + int(fields_[12])) / self._tick

    @contextlib.contextmanager
    def measure(self, into: Figures, checks: int | None = None) -> Iterator[None]:
        wall, worker, ours = time.monotonic(), self.worker(), time.process_time()
        yield
        seconds = max(time.monotonic() - wall, 1e-6)
        used = self.worker() - worker
        into["worker_cpu_cores"] = round(used / seconds, 2)
        into["bench_cpu_cores"] = round((time.process_time() - ours) / seconds, 2)
        count = into.get("requests", checks)
        if count:
            into["worker_cpu_ms_per_check"] = round(1000 * used / count, 3)
