"""Retries with capped exponential backoff and full jitter, shared by every channel.

A channel's operation either returns a short detail string ("http 200", "250 OK") or raises
:class:`DeliveryError`. Everything else is a bug and propagates: a delivery loop that
swallowed a ``TypeError`` would retry it forever and report it as a flaky receiver.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


class DeliveryError(Exception):
    """One failed attempt. ``permanent`` failures are not retried (a 400, an SMTP 550)."""

    def __init__(self, detail: str, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attempt:
    channel: str
    number: int
    ok: bool
    detail: str
    permanent: bool


@dataclass(frozen=True)
class DeliveryOutcome:
    channel: str
    ok: bool
    attempts: int
    reason: str


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Delay after failed attempt number ``attempt`` (1-based).

    Full jitter (a uniform draw below the exponential ceiling) spreads out the retries of
    many notices that failed together, so a receiver coming back up is not hit in lockstep.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # min() before the power would overflow a float for large attempt numbers.
    ceiling = cap if attempt > 64 else min(cap, base * 2 ** (attempt - 1))
    return rng() * ceiling


async def with_retries(
    channel: str,
    operation: Callable[[], Awaitable[str]],
    *,
    max_attempts: int,
    base: float,
    cap: float,
    on_attempt: Callable[[Attempt], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> DeliveryOutcome:
    """Run ``operation`` until it succeeds, fails permanently, or ``max_attempts`` are spent."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    for number in range(1, max_attempts + 1):
        try:
            detail = await operation()
        except DeliveryError as error:
            attempt = Attempt(channel, number, False, error.detail, error.permanent)
            log.debug(
                "delivery attempt failed",
                channel=channel,
                attempt=number,
                detail=error.detail,
                permanent=error.permanent,
            )
            if on_attempt is not None:
                await on_attempt(attempt)
            if error.permanent or number == max_attempts:
                return DeliveryOutcome(channel, False, number, error.detail)
            if error.retry_after is not None:
                # The receiver asked for a pause; honour it, but never wait longer than we
                # would for our own backoff's worst case.
                delay = min(cap, max(0.0, error.retry_after))
            else:
                delay = backoff_delay(number, base, cap, rng)
            await sleep(delay)
        else:
            if on_attempt is not None:
                await on_attempt(Attempt(channel, number, True, detail, False))
            return DeliveryOutcome(channel, True, number, detail)
    raise AssertionError("unreachable: the loop returns on its last attempt")
