"""The demo subscribes early enough in a minute for its worker to read the subscriptions
before their first period ends (otherwise that period is a backfill: unrated, never dunned)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import bastionary.tools.demo as demo


class _Clock:
    def __init__(self, now: datetime):
        self.now = now
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock(datetime(2026, 12, 4, 8, 0, tzinfo=UTC))

    class _Now(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return clock.now

    monkeypatch.setattr(demo, "datetime", _Now)
    monkeypatch.setattr(demo.time, "sleep", clock.sleep)
    return clock


@pytest.mark.parametrize("second", [0, 12.5, 39.999])
def test_early_in_a_minute_it_subscribes_at_once(clock: _Clock, second: float) -> None:
    clock.now += timedelta(seconds=second)
    assert demo._early_in_a_minute() == clock.now
    assert clock.slept == []


@pytest.mark.parametrize("second", [40, 52.25, 59.97])
def test_late_in_a_minute_it_waits_for_the_next_one(clock: _Clock, second: float) -> None:
    clock.now += timedelta(seconds=second)
    moment = demo._early_in_a_minute()
    assert moment.minute == 1 and moment.second == 0
    assert moment.second < demo.SUBSCRIBE_BY_SECOND  # the whole first period is ahead of it
