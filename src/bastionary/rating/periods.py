"""Billing periods: calendar months and years from an anchor, or fixed durations."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from bastionary.settings import parse_iso_duration

_CALENDAR = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?$")


@dataclass(frozen=True)
class Interval:
    """``P1M``-style calendar intervals, or a fixed duration such as ``P7D`` or ``PT1M``."""

    months: int = 0
    fixed: timedelta = timedelta(0)

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _CALENDAR.match(text.strip().upper())
        if match and (match.group(1) or match.group(2)):
            months = int(match.group(1) or 0) * 12 + int(match.group(2) or 0)
            if months <= 0:
                raise ValueError(f"billing interval must be positive: {text!r}")
            return cls(months=months)
        duration = parse_iso_duration(text)
        if duration <= timedelta(0):
            raise ValueError(f"billing interval must be positive: {text!r}")
        return cls(fixed=duration)

    def nth_boundary(self, anchor: datetime, n: int) -> datetime:
        """The start of period ``n`` (0 = the anchor; negative, before it). Months count from
        the anchor, clamping the day (an anchor on the 31st bills on the 30th in April), never
        drifting."""
        if not self.months:
            return anchor + self.fixed * n
        total = anchor.month - 1 + self.months * n
        year, month = anchor.year + total // 12, total % 12 + 1
        day = min(anchor.day, calendar.monthrange(year, month)[1])
        return anchor.replace(year=year, month=month, day=day)

    def period_containing(self, anchor: datetime, moment: datetime) -> tuple[int, datetime, datetime]:
        """(n, start, end) of the period that contains ``moment``; ``n`` is negative for a moment
        before the anchor (periods count back from it: period -1 ends on the anchor)."""
        if self.months:
            # Floored, so a moment before the anchor counts back; the guess is always past
            # the moment (its boundary's month is later), and steps back to it.
            n = ((moment.year - anchor.year) * 12 + moment.month - anchor.month) // self.months + 1
            while self.nth_boundary(anchor, n) > moment:
                n -= 1
        else:
            n = (moment - anchor) // self.fixed  # exact and floored (timedelta // timedelta)
            while self.nth_boundary(anchor, n) > moment:
                n -= 1
            while self.nth_boundary(anchor, n + 1) <= moment:
                n += 1
        return n, self.nth_boundary(anchor, n), self.nth_boundary(anchor, n + 1)
