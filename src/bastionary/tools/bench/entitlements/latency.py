"""(a) check latency: one check at a time, then an open-loop client at a fixed rate."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import TYPE_CHECKING

from bastionary.tools.bench.entitlements.constants import FEATURE, TARGET_CHECK_P99_MS
from bastionary.tools.bench.entitlements.figures import Figures, _ms

if TYPE_CHECKING:
    from aiohttp import ClientSession
    from yarl import URL


def _urls(base: str, customers: list[str]) -> list[URL]:
    """Built once: parsing a URL per request would be the client's cost, not the worker's."""
    from yarl import URL

    return [URL(f"{base}/{customer}/entitlements/{FEATURE}", encoded=True) for customer in customers]


async def _serial(session: ClientSession, urls: list[URL], seconds: float, rng: random.Random) -> Figures:
    """One check at a time: what a check costs without any queueing."""
    durations: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        async with session.get(rng.choice(urls)) as response:
            await response.read()
            status = response.status
        if status == 200:
            durations.append(time.perf_counter() - sent)
        else:
            errors += 1
    durations.sort()
    return {
        "requests": len(durations) + errors,
        "errors": errors,
        "p50_ms": _ms(durations, 0.50),
        "p99_ms": _ms(durations, 0.99),
        "max_ms": round(1000 * durations[-1], 2) if durations else None,
    }


async def _open_loop(
    session: ClientSession,
    urls: list[URL],
    rate: float,
    seconds: float,
    rng: random.Random,
    target_p99_ms: float = TARGET_CHECK_P99_MS,
) -> Figures:
    """Checks at fixed scheduled times, whatever the answers do (open loop)."""
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    interval = 1.0 / rate
    from_scheduled: list[float] = []
    from_sent: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def one(url: URL, scheduled: float) -> None:
        sent = loop.time()
        try:
            async with session.get(url) as response:
                await response.read()
                status = response.status
        except Exception as exc:
            failures.append(type(exc).__name__)
            return
        done = loop.time()
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            from_scheduled.append(done - scheduled)
            from_sent.append(done - sent)
            lags.append(sent - scheduled)

    tasks: list[asyncio.Future[None]] = []
    began = loop.time() + 0.01
    for i in range(total):
        scheduled = began + i * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(rng.choice(urls), scheduled)))
    sending = loop.time() - began
    await asyncio.gather(*tasks)
    from_scheduled.sort()
    from_sent.sort()
    lags.sort()
    errors = total - statuses.get(200, 0)
    p99_ms = _ms(from_scheduled, 0.99)  # None when no check answered 200
    return {
        "requests": total,
        "seconds": round(sending, 2),
        "rate": round(total / max(sending, 1e-6)),
        "ok": statuses.get(200, 0),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": len(failures),
        "p50_ms": _ms(from_scheduled, 0.50),
        "p90_ms": _ms(from_scheduled, 0.90),
        "p99_ms": p99_ms,
        "max_ms": round(1000 * from_scheduled[-1], 2) if from_scheduled else None,
        "mean_ms": round(1000 * statistics.fmean(from_scheduled), 2) if from_scheduled else None,
        "from_send_p50_ms": _ms(from_sent, 0.50),
        "from_send_p99_ms": _ms(from_sent, 0.99),
        "client_lag_p99_ms": _ms(lags, 0.99),
        "target_p99_ms": target_p99_ms,
        "met": errors == 0 and p99_ms is not None and p99_ms <= target_p99_ms,
    }
