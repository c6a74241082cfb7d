"""The clock dunning timers run on.

``system`` is wall time. ``file:PATH`` reads the time from a file that tests, the demo and
``bastionary clock`` write, so a policy of days can be walked through in seconds. Nothing
is scheduled in memory: every tick compares the clock with ``due_at`` and the recorded
steps, so a restart (or a clock file that outlives the worker) loses no timer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileClock:
    def __init__(self, path: Path):
        self.path = Path(path)

    def now(self) -> datetime:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            raise ClockError(f"clock file {self.path} does not exist: run `bastionary clock set`") from None
        except UnicodeDecodeError:
            # Not written by set (a stray file, a wrong path): told as a bad clock file, not as a bug.
            raise ClockError(f"clock file {self.path} is not text: run `bastionary clock set`") from None
        return parse_moment(text)

    def set(self, moment: datetime) -> datetime:
        moment = moment.astimezone(UTC)
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(moment.isoformat())
        tmp.replace(self.path)  # atomic: a reader never sees half a timestamp
        return moment

    def advance(self, delta: timedelta) -> datetime:
        return self.set(self.now() + delta)


class ClockError(ValueError):
    pass


def parse_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ClockError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise ClockError(f"time needs an offset (e.g. Z): {text!r}")
    return moment.astimezone(UTC)


def clock_from_setting(value: str) -> SystemClock | FileClock:
    if value == "system":
        return SystemClock()
    if value.startswith("file:") and len(value) > 5:
        return FileClock(Path(value[5:]).expanduser())
    raise ClockError(f"clock must be 'system' or 'file:PATH', got {value!r}")
