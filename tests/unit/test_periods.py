"""Billing periods (``rating/periods.py``): calendar months and years counted from the anchor
with the day clamped (never drifting), fixed durations, and which period holds a moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bastionary.rating.periods import Interval
from bastionary.rating.plans import Plan

UTC = UTC


def at(*parts: int, tz=UTC) -> datetime:
    return datetime(*parts, tzinfo=tz)


def boundaries(interval: str, anchor: datetime, count: int) -> list[datetime]:
    parsed = Interval.parse(interval)
    return [parsed.nth_boundary(anchor, n) for n in range(count)]


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "months", "fixed"),
    [
        ("P1M", 1, timedelta(0)),
        ("P3M", 3, timedelta(0)),
        ("P1Y", 12, timedelta(0)),
        ("P1Y2M", 14, timedelta(0)),
        ("P12M", 12, timedelta(0)),
        ("p1m", 1, timedelta(0)),  # case and surrounding blanks are forgiven
        (" P1M ", 1, timedelta(0)),
        ("PT1M", 0, timedelta(minutes=1)),  # T: minutes, not months
        ("PT1H", 0, timedelta(hours=1)),
        ("P7D", 0, timedelta(days=7)),
        ("P1W", 0, timedelta(days=7)),
        ("P1DT12H", 0, timedelta(days=1, hours=12)),
        ("PT0.5S", 0, timedelta(seconds=0.5)),
    ],
)
def test_parse(text, months, fixed):
    assert Interval.parse(text) == Interval(months=months, fixed=fixed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1",
        "1M",
        "M1",
        "P1M1D",
        "P1Y1W",
        "P1MT1H",
        "P1.5M",
        "-P1M",
        "P-1M",
        "P0D",
        "PT0S",
        "P0W",
        "P1DT",
        "month",
    ],
)
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        Interval.parse(text)


@pytest.mark.parametrize("text", ["P0M", "P0Y", "P0Y0M", "P00M"])
def test_zero_calendar_interval_is_rejected(text):
    with pytest.raises(ValueError):
        Interval.parse(text)


def test_plan_rejects_zero_billing_interval():
    with pytest.raises(ValidationError):
        Plan(key="pro", currency="USD", billing_interval="P0M")


@pytest.mark.parametrize("text", ["PT90S", "PT0.5S", "PT1M30S", "P1DT59S"])
def test_plan_rejects_a_fixed_interval_inside_a_minute(text):
    # Periods are cut at whole minutes, like the usage rollups: PT90S would start a period
    # at :30 seconds, splitting a rollup minute between two invoices.
    with pytest.raises(ValidationError, match="whole number of minutes"):
        Plan(key="pro", currency="USD", billing_interval=text)


@pytest.mark.parametrize("text", ["PT120S", "PT1M", "P1DT60S", "P1M"])
def test_plan_takes_whole_minutes_however_written(text):
    assert Plan(key="pro", currency="USD", billing_interval=text).interval.fixed % timedelta(minutes=1) == timedelta(0)


@pytest.mark.parametrize("text", ["P9999999999D", "P999999999999W"])
def test_oversized_fixed_interval_is_a_value_error(text):
    with pytest.raises(ValueError):
        Interval.parse(text)


# --- calendar months: clamped to the month, counted from the anchor -------------------


def test_monthly_from_january_31_leap_year_never_drifts():
    assert boundaries("P1M", at(2024, 1, 31), 13) == [
        at(2024, 1, 31), at(2024, 2, 29), at(2024, 3, 31), at(2024, 4, 30), at(2024, 5, 31),
        at(2024, 6, 30), at(2024, 7, 31), at(2024, 8, 31), at(2024, 9, 30), at(2024, 10, 31),
        at(2024, 11, 30), at(2024, 12, 31), at(2025, 1, 31),
    ]  # fmt: skip


def test_monthly_from_january_31_common_year():
    assert boundaries("P1M", at(2023, 1, 31), 3) == [at(2023, 1, 31), at(2023, 2, 28), at(2023, 3, 31)]


def test_monthly_from_january_30_and_29():
    assert boundaries("P1M", at(2023, 1, 30), 3) == [at(2023, 1, 30), at(2023, 2, 28), at(2023, 3, 30)]
    assert boundaries("P1M", at(2024, 1, 29), 3) == [at(2024, 1, 29), at(2024, 2, 29), at(2024, 3, 29)]


def test_monthly_keeps_time_of_day_and_zone():
    cet = timezone(timedelta(hours=1))
    anchor = datetime(2024, 1, 31, 9, 30, 15, 250, tzinfo=cet)
    assert Interval.parse("P1M").nth_boundary(anchor, 1) == datetime(2024, 2, 29, 9, 30, 15, 250, tzinfo=cet)


def test_monthly_across_years():
    assert boundaries("P1M", at(2024, 11, 30), 4) == [
        at(2024, 11, 30),
        at(2024, 12, 30),
        at(2025, 1, 30),
        at(2025, 2, 28),
    ]


def test_quarterly_from_november_30():
    assert boundaries("P3M", at(2023, 11, 30), 5) == [
        at(2023, 11, 30), at(2024, 2, 29), at(2024, 5, 30), at(2024, 8, 30), at(2024, 11, 30),
    ]  # fmt: skip


def test_yearly_from_february_29():
    assert boundaries("P1Y", at(2024, 2, 29), 5) == [
        at(2024, 2, 29), at(2025, 2, 28), at(2026, 2, 28), at(2027, 2, 28), at(2028, 2, 29),
    ]  # fmt: skip


def test_year_and_months():
    assert boundaries("P1Y2M", at(2024, 1, 31), 3) == [at(2024, 1, 31), at(2025, 3, 31), at(2026, 5, 31)]


def test_boundaries_before_the_anchor():
    assert Interval.parse("P1M").nth_boundary(at(2024, 3, 31), -1) == at(2024, 2, 29)


# --- fixed durations --------------------------------------------------------------------


def test_every_minute():
    anchor = at(2024, 1, 1, 23, 59)
    assert boundaries("PT1M", anchor, 3) == [anchor, at(2024, 1, 2, 0, 0), at(2024, 1, 2, 0, 1)]


def test_every_seven_days_ignores_months():
    assert boundaries("P7D", at(2024, 2, 26), 3) == [at(2024, 2, 26), at(2024, 3, 4), at(2024, 3, 11)]
    assert boundaries("P1W", at(2024, 2, 26), 3) == boundaries("P7D", at(2024, 2, 26), 3)


# --- period_containing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at(2024, 1, 31), (0, at(2024, 1, 31), at(2024, 2, 29))),  # the anchor itself
        (at(2024, 2, 28, 23, 59, 59, 999999), (0, at(2024, 1, 31), at(2024, 2, 29))),
        (at(2024, 2, 29), (1, at(2024, 2, 29), at(2024, 3, 31))),  # a boundary starts its period
        (at(2024, 3, 30, 12), (1, at(2024, 2, 29), at(2024, 3, 31))),
        (at(2024, 3, 31), (2, at(2024, 3, 31), at(2024, 4, 30))),
        (at(2024, 4, 30), (3, at(2024, 4, 30), at(2024, 5, 31))),
        (at(2025, 1, 30, 23), (11, at(2024, 12, 31), at(2025, 1, 31))),
        (at(2025, 1, 31), (12, at(2025, 1, 31), at(2025, 2, 28))),
    ],
)
def test_monthly_period_containing(moment, expected):
    assert Interval.parse("P1M").period_containing(at(2024, 1, 31), moment) == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at(2025, 2, 27, 23, 59), (0, at(2024, 2, 29), at(2025, 2, 28))),
        (at(2025, 2, 28), (1, at(2025, 2, 28), at(2026, 2, 28))),
        (at(2028, 2, 29), (4, at(2028, 2, 29), at(2029, 2, 28))),
    ],
)
def test_yearly_period_containing(moment, expected):
    assert Interval.parse("P1Y").period_containing(at(2024, 2, 29), moment) == expected


@pytest.mark.parametrize(
    ("interval", "moment", "expected"),
    [
        ("PT1M", at(2024, 1, 1, 0, 0), (0, at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 1))),
        ("PT1M", at(2024, 1, 1, 0, 0, 59, 999999), (0, at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 1))),
        ("PT1M", at(2024, 1, 1, 0, 1), (1, at(2024, 1, 1, 0, 1), at(2024, 1, 1, 0, 2))),
        ("PT1M", at(2024, 1, 2, 0, 0), (1440, at(2024, 1, 2, 0, 0), at(2024, 1, 2, 0, 1))),
        ("P7D", at(2024, 1, 7, 23, 59, 59), (0, at(2024, 1, 1), at(2024, 1, 8))),
        ("P7D", at(2024, 1, 8), (1, at(2024, 1, 8), at(2024, 1, 15))),
        ("P7D", at(2024, 12, 30), (52, at(2024, 12, 30), at(2025, 1, 6))),
    ],
)
def test_fixed_period_containing(interval, moment, expected):
    assert Interval.parse(interval).period_containing(at(2024, 1, 1), moment) == expected


INTERVALS = ["P1M", "P2M", "P3M", "P1Y", "P1Y1M", "PT1M", "PT1H", "P1D", "P7D", "PT90S"]


@settings(max_examples=300, deadline=None, database=None)
@given(
    interval=st.sampled_from(INTERVALS),
    anchor=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3 * 366)),
)
def test_period_containing_holds_the_moment(interval, anchor, offset):
    parsed = Interval.parse(interval)
    moment = anchor + offset
    n, start, end = parsed.period_containing(anchor, moment)
    assert n >= 0
    assert start <= moment < end
    assert (start, end) == (parsed.nth_boundary(anchor, n), parsed.nth_boundary(anchor, n + 1))


@pytest.mark.parametrize(
    ("interval", "moment", "expected"),
    [
        # Before the anchor, periods count back (floored, not truncated toward the anchor):
        # a subscription that starts before its anchor bills them (rating/schedule.py).
        ("P1M", at(2024, 1, 17), (-1, at(2024, 1, 1), at(2024, 2, 1))),
        ("P1M", at(2024, 1, 31, 23, 59), (-1, at(2024, 1, 1), at(2024, 2, 1))),
        ("P1M", at(2023, 11, 30), (-3, at(2023, 11, 1), at(2023, 12, 1))),
        ("P3M", at(2023, 12, 31), (-1, at(2023, 11, 1), at(2024, 2, 1))),
        ("P1Y", at(2022, 2, 1), (-2, at(2022, 2, 1), at(2023, 2, 1))),
        ("P7D", at(2024, 1, 31), (-1, at(2024, 1, 25), at(2024, 2, 1))),
        ("P7D", at(2024, 1, 1), (-5, at(2023, 12, 28), at(2024, 1, 4))),
        ("P7D", at(2024, 1, 25), (-1, at(2024, 1, 25), at(2024, 2, 1))),  # a boundary starts its period
        ("PT1M", at(2024, 1, 31, 23, 59, 30), (-1, at(2024, 1, 31, 23, 59), at(2024, 2, 1))),
    ],
)
def test_period_containing_a_moment_before_the_anchor(interval, moment, expected):
    assert Interval.parse(interval).period_containing(at(2024, 2, 1), moment) == expected


def test_period_containing_before_an_anchor_on_the_31st_clamps_as_after():
    assert Interval.parse("P1M").period_containing(at(2024, 3, 31), at(2024, 3, 10)) == (
        -1,
        at(2024, 2, 29),
        at(2024, 3, 31),
    )


@settings(max_examples=300, deadline=None, database=None)
@given(
    interval=st.sampled_from(INTERVALS),
    anchor=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    offset=st.timedeltas(min_value=timedelta(days=-3 * 366), max_value=timedelta(days=3 * 366)),
)
def test_period_containing_holds_the_moment_before_or_after_the_anchor(interval, anchor, offset):
    parsed = Interval.parse(interval)
    moment = anchor + offset
    n, start, end = parsed.period_containing(anchor, moment)
    assert (n < 0) == (moment < anchor)
    assert start <= moment < end
    assert (start, end) == (parsed.nth_boundary(anchor, n), parsed.nth_boundary(anchor, n + 1))


@settings(max_examples=200, deadline=None, database=None)
@given(
    months=st.integers(1, 24),
    anchor=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    n=st.integers(0, 60),
)
def test_calendar_boundaries_depend_only_on_the_anchor(months, anchor, n):
    """No drift: boundary n is the anchor's day (clamped) n x months later, whatever came between."""
    boundary = Interval(months=months).nth_boundary(anchor, n)
    total = anchor.month - 1 + months * n
    assert (boundary.year, boundary.month) == (anchor.year + total // 12, total % 12 + 1)
    assert boundary.day == anchor.day or (boundary.day < anchor.day and (boundary + timedelta(days=1)).day == 1)
    assert boundary.time() == anchor.time() and boundary.tzinfo is anchor.tzinfo
