"""Faust's consumer, delivering each record without four tasks.

Faust's fetch loop (``Consumer._drain_messages``) hands every record to the conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: a task for the
delivery, three more for the suspended flow and the consumer's stop and crash, an
``asyncio.wait`` over the four, and three cancellations. On the development machine that is
about 33 us per record (``wait_first`` against a plain ``await`` of a delivery that returns at
once), a quarter of a single-event record's whole cost in the worker.

The race matters only for a delivery that has to wait: a full queue, a partition being
recovered. A rebalance suspends the flow, and the delivery is abandoned so the rebalance
can go on. Most deliveries never wait: the conductor puts the record in the usage intake
and returns. So here a delivery's first step runs inline, in the fetch loop's task. If it
returns there, no task is made. If it waits, the rest of it goes on in a task, raced against
the suspended flow, the stop and the crash by Faust's own ``wait_first``, as before.

What changes for a delivery that finishes inline: it runs in the fetch loop's task and
context, not a task of its own. It was never abandoned before either: a delivery that
completes in its first step completed under ``wait_first`` too, flow suspended or not (its
task ran first).

Faust's loop yields to the event loop every 100 records, and ``wait_first`` yielded on every
record besides. Inline, a fetch of a few hundred records would hold the loop for milliseconds
while entitlement checks and heartbeats wait, so this loop yields once ``YIELD_AFTER_SECONDS``
have passed since it last did, whatever the count. The clock is the wall's: time spent waiting
for the GIL (the flush thread holds it too) is time a check waits as well.

A seek while a fetch is being delivered (the sink rewinding a partition from inside a
delivery, or from the log check at one of the loop's yields) leaves the rest of that fetch
stale for the partition sought. Faust's loop delivered it anyway and set the partition's read
offset from it, over the one the seek had set: the refetched records from the seek's target
up to there were then dropped as already read, so the rewind never took and the partition
stalled until a retry fell between fetches. Here the rest of such a fetch is dropped, and the
read offset is left as the seek set it.

The fetch loop below is Faust's (faust-streaming 0.15.3, ``faust/transport/consumer.py``),
with its delivery line replaced; ``tests/unit/test_direct_delivery.py`` fails if Faust's
loop changes, so the copy is reread on an upgrade.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING, ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

# About a GIL switch interval while requests come in (worker/switching.py): a yield per
# millisecond costs the loop one pass, a few microseconds.
YIELD_AFTER_SECONDS = 0.001


class DirectDeliveryConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with :func:`deliver` in its fetch loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Partitions sought since the current fetch returned: the rest of it is from before.
        self._sought: set[TP] = set()

    async def seek(self, partition: TP, offset: int) -> None:
        await faust_aiokafka.Consumer.seek(self, partition, offset)  # named: a fetch loop's test double seeks too
        self._sought.add(ensure_TP(partition))

    async def _drain_messages(self, fetcher: Any) -> None:
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        race = self._race_with_flow
        sought = self._sought
        clock = time.monotonic
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                fetched = cast(AsyncIterator[Any], getmany(timeout=1.0))
                # Faust's reason: getmany may return at once, over and over, never yielding.
                await self.sleep(0)
                yield_at = clock() + YIELD_AFTER_SECONDS
                fetch_returned = False
                if not self.should_stop:
                    async for tp, message in fetched:
                        if not fetch_returned:
                            # Nothing awaited since the fetch returned: it was read after every seek so far.
                            fetch_returned = True
                            sought.clear()
                        if clock() >= yield_at:
                            await asyncio.sleep(0)
                            yield_at = clock() + YIELD_AFTER_SECONDS
                        if tp in sought:
                            continue  # fetched before the seek: the next fetch reads from its target
                        offset = message.offset
                        read_offset = get_read_offset(tp)
                        if read_offset is None or offset >= read_offset:
                            gap = offset - (read_offset or 0)
                            if gap > 1 and read_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, read_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await deliver(callback(message), race)
                            if tp not in sought:
                                set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception:
            self.log.exception("Drain messages raised")
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _race_with_flow(self, rest: Awaitable[Any]) -> None:
        """Faust's race for a delivery that waits: it ends when the delivery does, or when the
        flow is suspended or the consumer stops or crashes (then the delivery is cancelled)."""
        await self.wait_first(rest, self.suspend_flow.wait())


async def deliver(delivery: Awaitable[Any], race: Callable[[Awaitable[Any]], Awaitable[object]]) -> None:
    """Run ``delivery``'s first step here; if it waits, ``race`` the rest of it, in a task.
    Its exception propagates."""
    if not isinstance(delivery, Coroutine):  # no first step to take: Faust's way
        await race(delivery)
        return
    waiting = first_step(delivery)
    if waiting is _FINISHED:
        return
    rest = asyncio.ensure_future(_resumed(delivery, waiting))
    # Cancelled before its first step, the task never reaches the delivery to cancel it.
    rest.add_done_callback(lambda task: delivery.close() if task.cancelled() else None)
    await race(rest)


_FINISHED = object()


def first_step(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` until it first waits; what it yielded then (the future it waits
    on), or ``_FINISHED`` if it returned. Its exception propagates."""
    try:
        return coroutine.send(None)
    except StopIteration:
        return _FINISHED


async def _resumed(coroutine: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """The rest of a coroutine that yielded ``waiting``, driven by the task that awaits this."""
    return await _continue(coroutine, waiting)


@types.coroutine
def _continue(coroutine: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    # ``yield from``, for a coroutine already started: the driving task sees the future the
    # coroutine waits on, and sends (or throws) its outcome back in.
    while True:
        try:
            outcome = yield waiting
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:
            try:
                waiting = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting = coroutine.send(outcome)
            except StopIteration as stop:
                return stop.value


def deliver_directly(transport: Any) -> None:
    """Make ``transport`` (a Faust app's, before its consumer exists) build this consumer."""
    if not isinstance(transport, faust_aiokafka.Transport):
        raise TypeError(f"direct delivery is built on Faust's aiokafka transport, not {type(transport).__name__}")
    # Faust's transport names its consumer class in a class attribute; this app's alone changes.
    transport.Consumer = DirectDeliveryConsumer  # type: ignore[misc]
