"""Whether the worker kept up with the usage stream during a phase: the records in its
partitions' logs that it had not yet landed (up to the log end its consumer last saw),
sampled off ``/healthz`` while the phase runs.

A freshness or latency figure alone cannot say whether the worker was behind the stream
(every event then waits for the backlog ahead of it) or kept up and answered slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from aiohttp import ClientSession

SAMPLE_EVERY_S = 0.5


async def _healthz_report(session: ClientSession, port: int) -> Any:
    """The worker's ``/healthz`` body, decoded, whatever its status (a worker behind its
    stream answers 503 with the same report)."""
    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
        return orjson.loads(await response.read())


async def _waiting_records(session: ClientSession, port: int) -> int | None:
    """The records not yet landed, over every partition; None if ``/healthz`` gave no report
    to read."""
    try:
        report = await _healthz_report(session, port)
        return sum(int(p["waiting"]) for p in report["partitions"].values())
    except Exception:  # a figure: a sample missed is counted, never raised
        return None


@contextlib.asynccontextmanager
async def sampled_backlog(session: ClientSession, port: int, into: dict[str, Any]) -> AsyncIterator[None]:
    """Sample the worker's backlog every :data:`SAMPLE_EVERY_S` for the block; on the way out,
    ``into`` gets ``backlog_max_records``, ``backlog_mean_records`` (None without a sample)
    and ``backlog_samples_missed``."""
    samples: list[int] = []
    missed = 0

    async def sample() -> None:
        nonlocal missed
        while True:
            waiting = await _waiting_records(session, port)
            if waiting is None:
                missed += 1
            else:
                samples.append(waiting)
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.ensure_future(sample())
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        into["backlog_max_records"] = max(samples) if samples else None
        into["backlog_mean_records"] = round(sum(samples) / len(samples), 1) if samples else None
        into["backlog_samples_missed"] = missed
