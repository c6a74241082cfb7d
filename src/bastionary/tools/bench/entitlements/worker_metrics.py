"""The worker's own figures for a phase, as differences between two readings of its
``/metrics``: the flushes that landed (``bastionary_usage_flush_seconds``) and how late its
event loop ran (``bastionary_event_loop_lag_seconds``, see worker/loop_lag.py)."""

from __future__ import annotations

import contextlib
import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import ClientSession

FLUSH = "bastionary_usage_flush_seconds"
LOOP_LAG = "bastionary_event_loop_lag_seconds"


# The histograms' lines as prometheus_client writes them; any other line is not read.
_HISTOGRAM_LINE = re.compile(
    rf'({re.escape(FLUSH)}|{re.escape(LOOP_LAG)})(_count|_sum|_bucket\{{le="([^"]+)"\}}) (\S+)'
)


# A histogram line's name, part (_count, _sum or _bucket) and bucket bound (None but for
# _bucket; +Inf read as math.inf), parsed once as the line is read.
ReadingKey = tuple[str, str, float | None]


async def _worker_readings(session: ClientSession, port: int) -> dict[ReadingKey, float]:
    """The worker's flush and loop-lag histograms: sum, count and bucket counts ({} without
    an answer, and a line that is not one of theirs skipped: the figures are then left out,
    never raised)."""
    with contextlib.suppress(Exception):
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            return _histogram_readings(await response.text())
    return {}


def _histogram_readings(text: str) -> dict[ReadingKey, float]:
    out: dict[ReadingKey, float] = {}
    for line in text.splitlines():
        matched = _HISTOGRAM_LINE.fullmatch(line)
        if matched is None:
            continue
        try:
            value = float(matched[4])
            bound = None if matched[3] is None else float(matched[3])
        except ValueError:
            continue
        if math.isfinite(value) and (bound is None or not math.isnan(bound)):
            part = "_bucket" if bound is not None else matched[2]
            out[(matched[1], part, bound)] = value
    return out


def _histogram_delta(
    before: dict[ReadingKey, float], after: dict[ReadingKey, float], name: str
) -> tuple[float, float, float | None]:
    """Observations of histogram ``name`` between the readings: count, sum, and the upper
    bound of the bucket holding the 99th percentile (None past the last finite bucket)."""
    delta = {key: v - before.get(key, 0.0) for key, v in after.items() if key[0] == name}
    count = delta.get((name, "_count", None), 0.0)
    buckets = sorted(
        (bound, v)
        for (_, part, bound), v in delta.items()
        if part == "_bucket" and bound is not None and bound != math.inf
    )
    p99_bucket = next((le for le, n in buckets if n >= 0.99 * count), None) if count else None
    return count, delta.get((name, "_sum", None), 0.0), p99_bucket


def _flush_delta(before: dict[ReadingKey, float], after: dict[ReadingKey, float]) -> dict[str, float | None]:
    """Flushes that landed between two readings: how many, how long on average, the slowest bucket."""
    count, total, p99_bucket = _histogram_delta(before, after, FLUSH)
    if not count:
        return {"flushes": 0}
    return {
        "flushes": int(count),
        "flush_mean_s": round(total / count, 3),
        "flush_p99_at_most_s": p99_bucket,  # the histogram bucket holding the 99th percentile
    }


def _loop_lag_delta(before: dict[ReadingKey, float], after: dict[ReadingKey, float]) -> dict[str, float | None]:
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
