"""Tracked events leave in batches: when ``size`` events wait, or ``linger`` seconds after
the first of them, whichever comes first; and whenever the caller flushes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from bastionary.client.errors import DeliveryFailed, EventsRejected
from bastionary.client.transport import EventSender

log = structlog.get_logger(__name__)
ErrorHandler = Callable[[DeliveryFailed], None]


def log_failure(failure: DeliveryFailed) -> None:
    log.error("usage events not delivered", events=len(failure.events), cause=str(failure.cause))


class Batcher:
    def __init__(
        self, sender: EventSender, size: int, linger: float, max_pending: int, on_error: ErrorHandler | None = None
    ):
        if size < 1 or linger < 0 or max_pending < size:
            raise ValueError("need size >= 1, linger >= 0 and max_pending >= size")
        self.sender = sender
        self.size = size
        self.linger = linger
        self.on_error = on_error or log_failure
        self._pending: list[dict[str, Any]] = []
        self._space = asyncio.Semaphore(max_pending)
        self._ready = asyncio.Event()  # a batch is full, or a flush wants everything now
        self._drained = asyncio.Event()
        self._drained.set()
        self._flushing = 0
        self._failures: list[DeliveryFailed] = []
        self._task: asyncio.Task[None] | None = None
        self._release: Callable[[int], None] = self._release_space

    def bound_by(self, release: Callable[[int], None]) -> None:
        """Let the caller bound what waits (a thread's semaphore, for the sync client):
        ``release(n)`` is called as ``n`` events leave, delivered or failed."""
        self._release = release

    async def add(self, event: dict[str, Any]) -> None:
        """Queue one event; waits while ``max_pending`` events are still undelivered."""
        await self._space.acquire()
        self.put(event)

    def put(self, event: dict[str, Any]) -> None:
        """Queue one event without waiting (on the loop's thread): the caller bounds."""
        self._pending.append(event)
        self._drained.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="bastionary-client-batcher")
        if len(self._pending) >= self.size or len(self._pending) == 1:
            self._ready.set()

    async def flush(self) -> None:
        """Deliver everything queued so far; raises :class:`DeliveryFailed` for what could
        not be delivered since the last flush (also passed to ``on_error`` when it failed)."""
        self._flushing += 1
        self._ready.set()
        try:
            await self._drained.wait()
        finally:
            self._flushing -= 1
        failures, self._failures = self._failures, []
        if failures:
            events = [event for failure in failures for event in failure.events]
            raise DeliveryFailed(events, failures[-1].cause)

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._drained.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            if len(self._pending) < self.size and not self._flushing:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), self.linger)
            batch, self._pending = self._pending[: self.size], self._pending[self.size :]
            try:
                await self.sender.send(batch)
            except EventsRejected as rejected:
                # The server kept the rest: only the rejected members failed, and a retry
                # would be rejected again.
                failed = [batch[r["index"]] for r in rejected.rejected if 0 <= r.get("index", -1) < len(batch)]
                self._fail(DeliveryFailed(failed, rejected))
            except Exception as exc:
                self._fail(DeliveryFailed(batch, exc))
            finally:
                self._release(len(batch))

    def _release_space(self, count: int) -> None:
        for _ in range(count):
            self._space.release()

    def _fail(self, failure: DeliveryFailed) -> None:
        self._failures.append(failure)
        try:
            self.on_error(failure)
        except Exception:
            log.exception("the client's on_error handler failed")
