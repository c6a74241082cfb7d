"""The bounded waits that keep the worker's watchers alive whatever a Kafka client call does."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from bastionary.worker.deadline import Abandoned, CancelledInside, keep_checking, within


async def _stubborn(started: asyncio.Event, released: asyncio.Event) -> None:
    """A call that swallows its cancellation and goes on waiting, as a hung client call can."""
    started.set()
    while not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:
            continue


async def _cancelled_from_inside() -> None:
    raise asyncio.CancelledError


def test_a_call_that_answers_in_time_gives_its_answer():
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert asyncio.run(within(answer(), 1.0, "an answer")) == 42


def test_a_call_that_fails_raises_its_own_error():
    async def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        asyncio.run(within(fail(), 1.0, "a failure"))


def test_a_call_that_swallows_its_cancellation_is_abandoned_at_the_deadline_with_where_it_waits():
    async def scenario() -> tuple[float, Abandoned]:
        started, released = asyncio.Event(), asyncio.Event()
        begun = time.monotonic()
        with pytest.raises(Abandoned) as caught:
            await within(_stubborn(started, released), 0.2, "a stubborn call")
        took = time.monotonic() - begun
        released.set()  # let it end, so the loop closes cleanly
        await asyncio.sleep(0)
        return took, caught.value

    took, abandoned = asyncio.run(scenario())
    assert took < 2.0  # asyncio.wait_for would wait here for good
    assert "a stubborn call took longer than 0.2 s" in str(abandoned)
    assert "_stubborn" in abandoned.stack


def test_a_cancellation_raised_inside_the_call_is_an_ordinary_error_for_the_caller():
    async def scenario() -> str:
        try:
            await within(_cancelled_from_inside(), 1.0, "a leaky call")
        except CancelledInside as error:
            return str(error)
        return "not raised"

    assert asyncio.run(scenario()) == "a leaky call was cancelled from inside"


def test_cancelling_the_caller_still_cancels_it():
    async def scenario() -> bool:
        inner = asyncio.Event()
        caller = asyncio.ensure_future(within(inner.wait(), 10.0, "a wait"))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        return caller.cancelled()

    assert asyncio.run(scenario())


def test_checks_go_on_after_failures_leaks_and_hangs_and_stop_only_when_hangs_outlast_the_limit():
    calls: list[str] = []
    released = asyncio.Event()

    async def check() -> None:
        n = len(calls)
        kind = ["fail", "leak", "hang", "ok", "hang", "hang", "hang", "hang", "hang"][min(n, 8)]
        calls.append(kind)
        if kind == "fail":
            raise ConnectionError("broker gone")
        if kind == "leak":
            raise asyncio.CancelledError
        if kind == "hang":
            await _stubborn(asyncio.Event(), released)

    async def scenario() -> None:
        await asyncio.wait_for(
            keep_checking(check, interval=0.01, deadline=0.05, give_up_after=0.15, what="the test check"), 10
        )
        released.set()
        await asyncio.sleep(0)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    # fail, leak and one hang are survived, and the "ok" round resets the count of hangs;
    # then hangs follow each other until they have lasted longer than the limit.
    assert calls[:4] == ["fail", "leak", "hang", "ok"]
    assert 2 <= calls[4:].count("hang") <= 4
    events = [entry["event"] for entry in logs]
    assert events.count("check failed; trying again at the next interval") == 2
    assert events.count("check hung; abandoned it") == calls.count("hang")
