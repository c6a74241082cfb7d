"""Records delivered without a task each (bastionary.worker.direct_delivery), and Faust's
fetch loop it copies, pinned."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

from bastionary.settings import Settings
from bastionary.worker import direct_delivery
from bastionary.worker.app import create_app
from bastionary.worker.direct_delivery import YIELD_AFTER_SECONDS, DirectDeliveryConsumer, deliver

# Faust's loop, whitespace collapsed: a Faust upgrade that changes it fails here, and the copy
# in direct_delivery.py is reread against the new one before this digest is renewed.
FAUST_DRAIN_DIGEST = "30fba6e560f13bf79dd171ef4df3870592550143c652d6db5c2c305d38e08e6c"


def _normalized_source(function: Any) -> str:
    return " ".join(inspect.getsource(function).split())


def test_faust_fetch_loop_is_the_one_copied() -> None:
    source = _normalized_source(Consumer._drain_messages)
    assert "await self.wait_first( callback(message), self.suspend_flow.wait() )" in source
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_DRAIN_DIGEST


def test_the_copy_replaces_only_the_delivery() -> None:
    source = _normalized_source(DirectDeliveryConsumer._drain_messages)
    assert "wait_first" not in source
    assert "await deliver(callback(message), race)" in source


class _FetchingConsumer:
    """What ``_drain_messages`` reads of its consumer: one fetch of ``records`` records, each
    delivery taking ``cost`` seconds of the loop's clock (``now``), then a stop."""

    consumer_stopped_errors = ()
    should_stop = False
    _commit_every = None

    def __init__(self, records: int, cost: float) -> None:
        self._records, self._cost = records, cost
        self._fetched = False
        self._stopped = asyncio.Event()
        self._read_offset: defaultdict[Any, int | None] = defaultdict(lambda: None)
        self._sought: set[Any] = set()
        self.diag = SimpleNamespace(set_flag=lambda _flag: None, unset_flag=lambda _flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda _topic: False))
        self.happened: list[str] = []
        self.now = 0.0

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[str, Any]]:
        if self._fetched:
            self._stopped.set()
            return
        self._fetched = True
        for offset in range(self._records):
            yield "tp", SimpleNamespace(offset=offset, topic="usage.events")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def callback(self, message: Any) -> None:
        self.now += self._cost
        self.happened.append("delivered")

    async def _race_with_flow(self, rest: Any) -> None:
        await rest


async def _drain_beside_a_ticker(consumer: _FetchingConsumer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fetch loop's deliveries, and every pass another task got of the event loop."""
    monkeypatch.setattr(direct_delivery, "time", SimpleNamespace(monotonic=lambda: consumer.now))

    async def ticker() -> None:
        while True:
            consumer.happened.append("tick")
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    try:
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        await DirectDeliveryConsumer._drain_messages(consumer, fetcher)  # type: ignore[arg-type]
    finally:
        ticking.cancel()
    return consumer.happened


def _longest_run_of_deliveries(happened: list[str]) -> int:
    return max(len(run) for run in "".join("d" if h == "delivered" else " " for h in happened).split(" "))


async def test_the_fetch_loop_lets_other_tasks_in_once_its_time_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each delivery takes 0.4 of the budget: the loop yields after every third.
    consumer = _FetchingConsumer(records=30, cost=0.4 * YIELD_AFTER_SECONDS)
    happened = await _drain_beside_a_ticker(consumer, monkeypatch)
    assert happened.count("delivered") == 30
    assert _longest_run_of_deliveries(happened) == 3


async def test_the_fetch_loop_does_not_yield_per_record_within_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # wait_first yielded on every record; records that take no time go through in one pass,
    # however many (Faust's own loop yielded every 100).
    happened = await _drain_beside_a_ticker(_FetchingConsumer(records=250, cost=0.0), monkeypatch)
    assert happened.count("delivered") == 250
    assert _longest_run_of_deliveries(happened) == 250


class _Flow:
    """A consumer's side of the race: Faust's ``wait_first`` against a suspended flow."""

    def __init__(self) -> None:
        self.service = Service()
        self.suspended = asyncio.Event()
        self.raced = 0

    async def race(self, rest: Any) -> None:
        self.raced += 1
        await self.service.wait_first(rest, self.suspended.wait())


async def test_a_delivery_that_does_not_wait_runs_in_the_callers_task_with_no_race() -> None:
    flow = _Flow()
    ran_in: list[asyncio.Task[Any] | None] = []

    async def delivery() -> None:
        ran_in.append(asyncio.current_task())

    tasks_before = len(asyncio.all_tasks())
    await deliver(delivery(), flow.race)
    assert ran_in == [asyncio.current_task()]
    assert flow.raced == 0
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_delivery_that_waits_finishes_in_a_task_with_what_it_awaited() -> None:
    flow = _Flow()
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def delivery() -> None:
        seen.append(await gate)
        await asyncio.sleep(0)  # a bare yield, then a second future
        seen.append(await asyncio.sleep(0.001, result="after"))

    asyncio.get_running_loop().call_soon(gate.set_result, "opened")
    await deliver(delivery(), flow.race)
    assert seen == ["opened", "after"]
    assert flow.raced == 1


@pytest.mark.parametrize("waits", [False, True])
async def test_a_deliverys_exception_propagates(waits: bool) -> None:
    flow = _Flow()

    async def delivery() -> None:
        if waits:
            await asyncio.sleep(0.001)
        raise ValueError("a record the conductor refused")

    with pytest.raises(ValueError, match="refused"):
        await deliver(delivery(), flow.race)


async def test_a_suspended_flow_cancels_a_waiting_delivery_where_it_waits() -> None:
    flow = _Flow()
    events: list[str] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def delivery() -> None:
        try:
            await never
        except asyncio.CancelledError:
            events.append("cancelled while waiting")
            raise
        events.append("went on")  # pragma: no cover

    asyncio.get_running_loop().call_later(0.01, flow.suspended.set)
    await asyncio.wait_for(deliver(delivery(), flow.race), timeout=5)
    await asyncio.sleep(0)  # the cancellation reaches the delivery at its next step
    assert events == ["cancelled while waiting"]
    assert never.cancelled()


async def test_a_thrown_exception_reaches_the_delivery_and_it_may_recover() -> None:
    flow = _Flow()
    failing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def delivery() -> None:
        try:
            await failing
        except RuntimeError as error:
            outcome.append(f"caught {error}")
        outcome.append(await asyncio.sleep(0, result="recovered"))

    asyncio.get_running_loop().call_soon(failing.set_exception, RuntimeError("broker went away"))
    await deliver(delivery(), flow.race)
    assert outcome == ["caught broker went away", "recovered"]


async def test_a_delivery_whose_task_is_cancelled_before_it_starts_is_closed() -> None:
    closed: list[bool] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def delivery() -> None:
        try:
            await never
        finally:
            closed.append(True)

    async def cancel_at_once(rest: Any) -> None:
        rest.cancel()  # before the task's first step: it never reaches the delivery
        with pytest.raises(asyncio.CancelledError):
            await rest

    await deliver(delivery(), cancel_at_once)
    assert closed == [True]


async def test_an_awaitable_that_is_no_coroutine_is_raced_whole() -> None:
    flow = _Flow()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_result, None)
    await deliver(future, flow.race)
    assert flow.raced == 1 and future.done()


async def test_the_worker_app_builds_the_direct_delivery_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # create_app patches Faust and aiokafka for the process: this test's patches undo them after.
    thread_class = faust_aiokafka.AIOKafkaConsumerThread
    monkeypatch.setattr(thread_class, "_create_worker_consumer", thread_class._create_worker_consumer)
    monkeypatch.setattr(thread_class, "_bastionary_original_create", None, raising=False)
    monkeypatch.setattr(fetcher, "MemoryRecords", fetcher.MemoryRecords)
    switch_interval = sys.getswitchinterval()
    try:
        app = create_app(Settings(data_dir=tmp_path), "127.0.0.1:9", lambda *_args: None)
        assert type(app.consumer) is DirectDeliveryConsumer
    finally:
        sys.setswitchinterval(switch_interval)
