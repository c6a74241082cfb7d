"""Bounded waits on Kafka client calls that must never hang the worker's watchers.

``asyncio.wait_for`` cancels a call that timed out and then waits for the cancellation to
finish. A client call that swallows its cancellation, or raises ``CancelledError`` though no
one cancelled the caller, then either hangs the caller for good or silently ends the task
that called it. :func:`within` does neither: past its deadline it gives up on the call
without waiting for it, and a cancellation from inside the call comes out as an ordinary
exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger(__name__)


class Abandoned(TimeoutError):
    """The call outlived its deadline and was left to end on its own; ``stack`` says where it was."""

    def __init__(self, what: str, seconds: float, stack: str):
        super().__init__(f"{what} took longer than {seconds:g} s and was abandoned")
        self.stack = stack


class CancelledInside(RuntimeError):
    """The call raised ``CancelledError`` although nothing cancelled its caller."""


async def within(call: Awaitable[T], seconds: float, what: str) -> T:
    task = asyncio.ensure_future(call)
    try:
        await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()  # the caller is cancelled: so is the call, but not waited for
        task.add_done_callback(_retrieve)
        raise
    if not task.done():
        stack = awaited_chain(task)
        task.cancel()
        task.add_done_callback(_retrieve)
        raise Abandoned(what, seconds, stack)
    if task.cancelled():
        raise CancelledInside(f"{what} was cancelled from inside")
    return task.result()


def awaited_chain(task: asyncio.Future[Any]) -> str:
    """Where a pending task waits, outermost first: the frames of its chain of awaits."""
    lines = []
    awaitable: object = task.get_coro() if isinstance(task, asyncio.Task) else task
    for _ in range(64):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(repr(awaitable)[:200])
            break
        lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
        if isinstance(awaitable, asyncio.Task):
            awaitable = awaitable.get_coro()
        if awaitable is None:
            break
    return "\n".join(lines)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """An abandoned call's outcome is of no use, but asyncio warns about one never retrieved."""
    if not task.cancelled():
        task.exception()


async def keep_checking(
    check: Callable[[], Awaitable[None]], *, interval: float, deadline: float, give_up_after: float, what: str
) -> None:
    """Run ``check`` every ``interval`` seconds, each run bounded by ``deadline``.

    A run that fails is logged and the next one starts on time. Returns only once runs have
    hung, one after another, for longer than ``give_up_after``: the caller then stops the
    worker, since something under the check no longer answers and a restart is the way out.
    """
    hanging_since: float | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            await within(check(), deadline, what)
            hanging_since = None
        except Abandoned as hung:
            hanging_since = hanging_since or time.monotonic() - deadline
            if _hang_outlasts(hung, time.monotonic() - hanging_since, give_up_after):
                return
        except Exception as exc:
            hanging_since = None
            log.warning(
                "check failed; trying again at the next interval", check=what, error=f"{type(exc).__name__}: {exc}"
            )


def _hang_outlasts(hung: Abandoned, hanging_for: float, give_up_after: float) -> bool:
    log.error("check hung; abandoned it", error=str(hung), waiting_at=hung.stack, hanging_for=round(hanging_for, 1))
    return hanging_for > give_up_after
