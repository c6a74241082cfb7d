"""Set-up: subscriptions and usage events, worker readiness, warm-up, settling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from bastionary.tools.bench.entitlements.constants import SETTLED_CORES
from bastionary.tools.bench.entitlements.cpu import _CpuClock
from bastionary.tools.bench.options import BenchError
from bastionary.tools.bench.stack import _Worker
from bastionary.tools.workload import Event

CheckAnswer = tuple[int, dict[str, Any] | None]  # the status and the JSON body (None when empty)
Check = Callable[[str], Awaitable[CheckAnswer]]  # GET /v1/customers/{customer}/entitlements/{FEATURE}


def _subscription(customer: str, plan: str, start: datetime) -> Event:
    return {
        "specversion": "1.0", "id": f"sub-{customer}", "source": "bastionary-bench-entitlements",
        "type": "bastionary.subscription.created.v1", "subject": customer, "time": start.isoformat(),
        "data": {"subscription_id": f"sub-{customer}", "customer_id": customer, "plan": plan,
                 "start": start.isoformat()},
    }  # fmt: skip


def _usage(customer: str, event_id: str) -> bytes:
    return orjson.dumps(_usage_event(customer, event_id, datetime.now(UTC).isoformat().replace("+00:00", "Z")))


def _usage_batch(customer: str, event_ids: list[str]) -> bytes:
    """One batch record of ``customer``'s events, all stamped now."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps([_usage_event(customer, event_id, now) for event_id in event_ids])


def _usage_event(customer: str, event_id: str, time: str) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": event_id, "source": "bastionary-bench-entitlements", "type": "api.request",
        "subject": customer, "time": time, "data": {"method": "GET"},
    }  # fmt: skip


async def _wait_ready(worker: _Worker, check: Check, customer: str, timeout: float) -> None:
    """Until the worker's web server answers for its partitions (503 not_ready before)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    last: CheckAnswer | Exception | None = None
    while time.monotonic() < deadline:
        worker.check_alive()
        try:
            status, body = await check(customer)
            if status in (200, 404):  # 404: its subscription has not landed yet, but routing works
                return
            last = (status, body)
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise BenchError(f"the worker's check API was not ready in {timeout:.0f}s (last: {last!r}); see {worker.log_path}")


async def _warm_up(worker: _Worker, check: Check, customers: list[str], timeout: float) -> None:
    """One check per customer loads its state (a 404 is retried until its subscription lands)."""
    deadline = time.monotonic() + timeout
    pending = list(customers)
    semaphore = asyncio.Semaphore(16)

    async def warm(customer: str) -> bool:
        async with semaphore:
            status, _ = await check(customer)
            return status == 200

    while pending:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} customers never answered 200 in {timeout:.0f}s; see {worker.log_path}")
        done = await asyncio.gather(*(warm(c) for c in pending))
        pending = [c for c, ok in zip(pending, done, strict=False) if not ok]
        if pending:
            await asyncio.sleep(0.5)


async def _settle(worker: _Worker, clock: _CpuClock, timeout: float) -> tuple[float, float]:
    """Wait until the worker idles: (seconds waited, its CPU in cores over the last second).

    Its change poll looks back ``POLL_WINDOW`` (5 s) every second, so a freshly subscribed
    customer is invalidated, and re-read by the reconciler, for a few seconds after its
    subscription landed; with many new customers that keeps the worker busy for a while.
    """
    started = time.monotonic()
    quiet = 0
    cores = float("nan")
    while time.monotonic() - started < timeout:
        worker.check_alive()
        before = clock.worker()
        await asyncio.sleep(1.0)
        cores = round(clock.worker() - before, 2)
        quiet = quiet + 1 if cores < SETTLED_CORES else 0
        if quiet >= 2:
            break
    return round(time.monotonic() - started, 1), cores
