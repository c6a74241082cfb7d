"""When a throughput run's last event landed, read off the worker's own ``/metrics``.

A run ends, as the project defines caught up, when the group's committed offsets reach the
log end. Faust commits once a second (``broker_commit_interval``), so that mark trails the
last landing by 0 to 1 s, and a batch run of 4 to 6 s measured by it moves in steps of a
second from run to run (3.92, 4.90 and 5.90 s were all seen for the same tree). The worker
counts each event as its flush lands (``bastionary_usage_events_accepted``, ``_duplicate``
and ``_dead_lettered``, after the ClickHouse writes and the dedupe cache), so the first time
those counters add up to every event offered is when the last one landed.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import urllib.request
from types import TracebackType

_COUNTED = re.compile(r"bastionary_usage_(?:events_accepted|events_duplicate|dead_lettered)_total(?:\{[^}]*\})? (\S+)")
POLL_SECONDS = 0.1  # the mark's resolution; a /metrics answer costs the worker about a millisecond


def events_counted(metrics_text: str) -> float:
    """Events the worker has landed as accepted, dropped as repeats, or dead-lettered."""
    total = 0.0
    for line in metrics_text.splitlines():
        matched = _COUNTED.fullmatch(line)
        if matched is not None:
            with contextlib.suppress(ValueError):
                total += float(matched[1])
    return total


class LandedWatch:
    """Polls the worker's ``/metrics`` on a thread until ``events`` are counted; ``landed_at``
    is the wall time of the poll that first saw them (None if it never did)."""

    def __init__(self, port: int, events: int, poll_seconds: float = POLL_SECONDS):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.events = events
        self.poll_seconds = poll_seconds
        self.landed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-landed-watch", daemon=True)

    def __enter__(self) -> LandedWatch:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # not up yet, or busy: the next poll asks again
                with urllib.request.urlopen(self.url, timeout=1.0) as response:
                    counted = events_counted(response.read().decode())
                if counted >= self.events:
                    self.landed_at = time.time()
                    return
            self._stop.wait(self.poll_seconds)
