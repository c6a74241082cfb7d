"""The worker's own figures for a phase, as differences between two readings of its
``/metrics``: the flushes that landed (``bastionary_usage_flush_seconds``) and how late its
event loop ran (``bastionary_event_loop_lag_seconds``, see worker/loop_lag.py)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import ClientSession

FLUSH = "bastionary_usage_flush_seconds"
LOOP_LAG = "bastionary_event_loop_lag_seconds"


async def _worker_readings(session: ClientSession, port: int) -> dict[str, float]:
    """The worker's flush and loop-lag histograms: sum, count and bucket counts ({} without
    an answer: the figures are then left out, never raised)."""
    out: dict[str, float] = {}
    with contextlib.suppress(Exception):
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith((FLUSH, LOOP_LAG)):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def _histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> tuple[float, float, float | None]:
    """Observations of histogram ``name`` between the readings: count, sum, and the upper
    bound of the bucket holding the 99th percentile (None past the last finite bucket)."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if k.startswith(name)}
    count = delta.get(f"{name}_count", 0.0)
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in delta.items()
        if k.startswith(f"{name}_bucket") and "+Inf" not in k
    )
    p99_bucket = next((le for le, n in buckets if n >= 0.99 * count), None) if count else None
    return count, delta.get(f"{name}_sum", 0.0), p99_bucket


def _flush_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Flushes that landed between two readings: how many, how long on average, the slowest bucket."""
    count, total, p99_bucket = _histogram_delta(before, after, FLUSH)
    if not count:
        return {"flushes": 0}
    return {
        "flushes": int(count),
        "flush_mean_s": round(total / count, 3),
        "flush_p99_at_most_s": p99_bucket,  # the histogram bucket holding the 99th percentile
    }


def _loop_lag_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """How late the worker's event loop woke its probe between two readings (none from a
    worker without the probe)."""
    count, total, p99_bucket = _histogram_delta(before, after, LOOP_LAG)
    if not count:
        return {}
    return {
        "loop_lag_probes": int(count),
        "loop_lag_mean_ms": round(1000 * total / count, 2),
        "loop_lag_p99_at_most_ms": None if p99_bucket is None else round(1000 * p99_bucket, 1),
    }
