"""Backoff and the retry loop shared by the notifier's channels; no real sleeping."""

from __future__ import annotations

import random

import pytest

from bastionary.dunning.notify.retry import (
    Attempt,
    DeliveryError,
    DeliveryOutcome,
    backoff_delay,
    with_retries,
)


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.attempts: list[Attempt] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def on_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)


def scripted(*results: str | DeliveryError):
    """An operation that returns or raises the given results in turn."""
    remaining = list(results)
    calls = []

    async def operation() -> str:
        calls.append(1)
        result = remaining.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    operation.calls = calls
    return operation


@pytest.mark.parametrize("attempt", range(1, 12))
@pytest.mark.parametrize(("base", "cap"), [(0.5, 30.0), (1.0, 5.0), (0.01, 0.05)])
def test_backoff_stays_within_full_jitter_bounds(attempt, base, cap):
    ceiling = min(cap, base * 2 ** (attempt - 1))
    rng = random.Random(attempt).random
    for _ in range(200):
        assert 0.0 <= backoff_delay(attempt, base, cap, rng) <= ceiling
    # The extremes of the draw reach the ends of the range.
    assert backoff_delay(attempt, base, cap, lambda: 0.0) == 0.0
    assert backoff_delay(attempt, base, cap, lambda: 1.0) == pytest.approx(ceiling)


def test_backoff_doubles_then_caps():
    top = [backoff_delay(n, 0.5, 3.0, lambda: 1.0) for n in range(1, 6)]
    assert top == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_survives_huge_attempt_numbers():
    assert backoff_delay(10_000, 0.5, 30.0, lambda: 1.0) == 30.0


def test_backoff_attempts_are_one_based():
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, 30.0, lambda: 1.0)


async def test_success_first_time():
    rec = Recorder()
    outcome = await with_retries(
        "webhook", scripted("http 200"), max_attempts=5, base=0.5, cap=30, on_attempt=rec.on_attempt, sleep=rec.sleep
    )
    assert outcome == DeliveryOutcome("webhook", True, 1, "http 200")
    assert rec.attempts == [Attempt("webhook", 1, True, "http 200", False)]
    assert rec.sleeps == []


async def test_permanent_failure_stops_at_once():
    rec = Recorder()
    operation = scripted(DeliveryError("http 400", permanent=True), "http 200")
    outcome = await with_retries(
        "webhook", operation, max_attempts=5, base=0.5, cap=30, on_attempt=rec.on_attempt, sleep=rec.sleep
    )
    assert outcome == DeliveryOutcome("webhook", False, 1, "http 400")
    assert len(operation.calls) == 1
    assert rec.attempts == [Attempt("webhook", 1, False, "http 400", True)]
    assert rec.sleeps == []


async def test_retryable_failure_retries_up_to_max_attempts():
    rec = Recorder()
    operation = scripted(*[DeliveryError("connection refused", permanent=False)] * 4)
    outcome = await with_retries(
        "email",
        operation,
        max_attempts=4,
        base=0.5,
        cap=30,
        on_attempt=rec.on_attempt,
        sleep=rec.sleep,
        rng=lambda: 1.0,
    )
    assert outcome == DeliveryOutcome("email", False, 4, "connection refused")
    assert len(operation.calls) == 4
    assert [a.number for a in rec.attempts] == [1, 2, 3, 4]
    assert all(not a.ok and not a.permanent for a in rec.attempts)
    # Backoff between attempts, none after the last one.
    assert rec.sleeps == [0.5, 1.0, 2.0]


async def test_recovers_after_retryable_failures():
    rec = Recorder()
    operation = scripted(DeliveryError("http 503", False), DeliveryError("http 503", False), "http 200")
    outcome = await with_retries(
        "webhook",
        operation,
        max_attempts=5,
        base=0.5,
        cap=30,
        on_attempt=rec.on_attempt,
        sleep=rec.sleep,
        rng=lambda: 0.5,
    )
    assert outcome == DeliveryOutcome("webhook", True, 3, "http 200")
    assert [(a.number, a.ok, a.detail) for a in rec.attempts] == [
        (1, False, "http 503"),
        (2, False, "http 503"),
        (3, True, "http 200"),
    ]
    assert rec.sleeps == [0.25, 0.5]


async def test_retry_after_overrides_backoff_bounded_by_cap():
    rec = Recorder()
    operation = scripted(
        DeliveryError("http 429", False, retry_after=2.0),
        DeliveryError("http 503", False, retry_after=120.0),
        DeliveryError("http 429", False, retry_after=-5.0),
        "http 200",
    )
    outcome = await with_retries(
        "webhook", operation, max_attempts=5, base=0.5, cap=30, sleep=rec.sleep, rng=lambda: 0.0
    )
    assert outcome.ok
    assert rec.sleeps == [2.0, 30.0, 0.0]


async def test_max_attempts_one_means_no_retry():
    rec = Recorder()
    outcome = await with_retries(
        "webhook", scripted(DeliveryError("http 503", False)), max_attempts=1, base=0.5, cap=30, sleep=rec.sleep
    )
    assert (outcome.ok, outcome.attempts) == (False, 1)
    assert rec.sleeps == []


async def test_max_attempts_must_be_positive():
    with pytest.raises(ValueError):
        await with_retries("webhook", scripted("http 200"), max_attempts=0, base=0.5, cap=30)


async def test_bugs_propagate():
    async def broken() -> str:
        raise TypeError("a bug, not a delivery failure")

    with pytest.raises(TypeError):
        await with_retries("webhook", broken, max_attempts=3, base=0.5, cap=30, sleep=Recorder().sleep)


def test_delivery_error_carries_its_fields():
    error = DeliveryError("http 429", permanent=False, retry_after=3.0)
    assert (error.detail, error.permanent, error.retry_after, str(error)) == ("http 429", False, 3.0, "http 429")
    assert DeliveryError("x", True).retry_after is None
