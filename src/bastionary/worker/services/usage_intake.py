"""Usage records taken from Faust's conductor as it delivers them, without an agent's stream.

An agent reads its topic through a Faust ``Stream``: every record is wrapped in an ``Event``,
queued, taken off the queue by the agent's task and passed through the stream's sensors and
bookkeeping before our code sees it. On this machine that machinery cost more per record
than everything the sink does with it (README, "Benchmark"). Here the conductor hands each
record of ``usage.events`` straight to :class:`UsageIntake`, which is the topic's queue.

What stays Faust's: the consumer, its group membership and rebalances, the offsets it commits
from our acks (``Message.ack``), tables and the web server. What the stream did that matters
is done here: records read before a rebalance finished (another generation, or while flow
control is suspended) are dropped unacked, as the stream drops them, and read again by the
partition's next owner.

Delivery is serial: the consumer awaits each record's delivery before the next, so a record
that needs an await (:meth:`UsageSink.admit` recovering a partition or asking the log about
a gap) or a backlog that must land first holds back every later record, in order. That is
the backpressure the stream's bounded queue used to give.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import structlog

from bastionary import metrics
from bastionary.metering.records import Admission, InboundRecord, record_timestamp_ms
from bastionary.metering.sink import LogNotAnswering, UsageSink

log = structlog.get_logger(__name__)


class UsageIntake:
    """The queue the conductor fills for the usage topic: ``full``, ``put_nowait_enhanced``
    and ``put`` are the parts of Faust's queue it uses."""

    def __init__(
        self,
        app: faust.App,
        sink: Callable[[], UsageSink],
        max_events: int,
        max_bytes: int,
        flush_needed: asyncio.Event,
        flush_once: Callable[[], Awaitable[None]],
        recovery_retry_seconds: float = 1.0,
    ) -> None:
        self._app = app
        self._sink = sink
        self._max_events, self._max_bytes = max_events, max_bytes
        self._flush_needed = flush_needed
        self._flush_once = flush_once
        # Between tries of what the broker put off by not answering: a recovery, a backlog's flush.
        self._recovery_retry_seconds = recovery_retry_seconds
        self._held: deque[InboundRecord] = deque()  # waiting for an awaited admission, in order
        self._catching_up: asyncio.Future[None] | None = None
        self._crashing: asyncio.Future[None] | None = None
        self._backlogged = False  # 4x the flush size is buffered: land it before reading on
        self._stopping = False  # the worker is stopping for a failure: admit nothing more

    def ack(self, record: InboundRecord) -> None:
        """The record has landed: its offset may be committed."""
        message: Any = record.handle
        message.ack(self._app.consumer)

    # -- the conductor's side --------------------------------------------------------------

    def full(self) -> bool:
        """True sends the next record through :meth:`put`, which the conductor awaits."""
        return self._backlogged or bool(self._held)

    def put_nowait_enhanced(self, value: Any, **_pressure_callbacks: Any) -> None:
        # ``value``: what the topic's decode returned (the message); Faust's compiled
        # conductor passes it by that name.
        record = self._record(value)
        if record is None:
            return
        try:
            admission = self._sink().admit_now(record)
        except Exception:
            log.exception("usage intake failed; stopping the worker so a restart can retry")
            self._crash("usage intake failed; stopping the worker so a restart can retry")
            return
        if admission is None:
            self._held.append(record)
            self._catching_up = asyncio.ensure_future(self._catch_up())
            return
        self._admitted(record, admission)

    async def put(self, message: Any) -> None:
        record = self._record(message)
        if record is not None:
            self._held.append(record)
        if self._catching_up is None or self._catching_up.done():
            if not (self._held or self._backlogged):
                return
            self._catching_up = asyncio.ensure_future(self._catch_up())
        # Shielded: the consumer abandons a delivery when a rebalance suspends its flow. An
        # admission or flush under way must not stop halfway; the next delivery waits for it.
        await asyncio.shield(self._catching_up)

    # -- admission --------------------------------------------------------------------------

    def _record(self, message: Any) -> InboundRecord | None:
        """The record to admit, or None for one read before the current rebalance finished."""
        if self._stopping or not self._current(message):
            return None
        metrics.RECORDS_RECEIVED.inc()
        return InboundRecord(
            message.topic,
            message.partition,
            message.offset,
            # No timestamp (-1) is dead-lettered, never replaced by the wall clock: a replay
            # must judge the record as before. The log probe converts the same way, or the
            # anchor of a far-future record would never match the log.
            record_timestamp_ms(message.timestamp),
            message.key,
            message.value,
            list(message.headers or ()),
            message,
        )

    def _current(self, message: Any) -> bool:
        """Read in the current generation, with the flow running: not before a rebalance."""
        app = self._app
        return bool(app.flow_control.is_active()) and message.generation_id == app.consumer_generation_id

    async def _catch_up(self) -> None:
        """Land the backlog, then admit the held records, in the order they came."""
        sink = self._sink()
        while (self._held or self._backlogged) and not self._stopping:
            if self._backlogged:
                await self._land_backlog()
                continue
            record = self._held[0]
            if not self._current(record.handle):
                # Held across a rebalance (this task is shielded from it): dropped unacked, as
                # at delivery; the partition's owner reads it again. Admitted, it could recover a
                # partition this worker no longer owns and land it beside the new owner.
                self._held.popleft()
                continue
            try:
                admission = await sink.admit(record)
            except LogNotAnswering as exc:
                # The recovery's anchor probe went unanswered: nothing was recovered or
                # written, so a broker that restarts must not stop the worker (as a flush is
                # put off, UsageSink.flush). The record stays first in line, unacked, and every
                # later record waits behind it; a rebalance meanwhile drops it as above.
                log.warning(
                    "partition recovery put off: the broker did not answer the anchor probe",
                    topic=record.topic,
                    partition=record.partition,
                    error=str(exc),
                )
                await asyncio.sleep(self._recovery_retry_seconds)
                continue
            except Exception:
                log.exception("partition recovery failed; stopping the worker so a restart can retry")
                self._crash("partition recovery failed; stopping the worker so a restart can retry")
                return
            self._held.popleft()
            self._admitted(record, admission)

    def _admitted(self, record: InboundRecord, admission: Admission) -> None:
        if admission is Admission.LANDED:
            self.ack(record)
            return
        if admission is Admission.STALE:
            return  # read before a rewind: the new log brings it again if it is there
        sink = self._sink()
        buffered, buffered_bytes = sink.buffered(), sink.buffered_bytes()
        if buffered >= self._max_events or buffered_bytes >= self._max_bytes:
            self._flush_needed.set()
        if self._backlog_reached(sink):
            self._backlogged = True

    def _backlog_reached(self, sink: UsageSink) -> bool:
        return sink.buffered() >= 4 * self._max_events or sink.buffered_bytes() >= 4 * self._max_bytes

    async def _land_backlog(self) -> None:
        try:
            await self._flush_once()
        except Exception:
            # The buffers stay unacked; a restart replays them (as when the flusher fails).
            log.exception("flush failed; stopping the worker so a restart can replay")
            self._crash("flush failed; stopping the worker so a restart can replay")
            return
        sink = self._sink()
        if sink.flush_put_off and self._backlog_reached(sink):
            # The broker did not answer the anchor probe: the backlog is back in its buffers,
            # unacked. Read on, and the buffers would grow without bound while every record
            # planned them all again; so the reader waits and the flush is tried again, as a
            # recovery put off waits (_catch_up). A rebalance releases the revoked partitions'
            # buffers, and what stays below the backlog no longer holds the reader.
            await asyncio.sleep(self._recovery_retry_seconds)
            return
        self._backlogged = False

    def _crash(self, message: str) -> None:
        """The records in hand stay unacked and are read again after the restart."""
        self._stopping = True
        self._held.clear()
        self._crashing = asyncio.ensure_future(self._app.crash(RuntimeError(message)))


class UsageTopic(faust.Topic):
    """``usage.events`` as the conductor sees it: each record goes to the intake undecoded."""

    def __init__(self, *args: Any, intake: UsageIntake, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intake = intake
        # Faust compiles the schema's decoder onto the instance; the intake reads the raw
        # message, so no Event is built.
        self.decode = _undecoded  # type: ignore[method-assign]  # as Faust itself assigns it

    @property
    def queue(self) -> Any:
        return self._intake

    async def put(self, event: Any) -> None:
        await self._intake.put(event)


async def _undecoded(message: Any, *, propagate: bool = False) -> Any:
    return message
