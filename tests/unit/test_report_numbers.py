"""The exact numbers of the usage and billing reports: plain text, every digit kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.storage.reports import jsonable, number


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1E+5"), "100000"),
        (Decimal("0.80"), "0.8"),
        (Decimal("0.000000000"), "0"),
        (Decimal("-1.50"), "-1.5"),
        (7, "7"),
        (None, None),
        # a SUM rollup total, Decimal(38, 9), of 29 and 38 digits: normalize() at 28 would round it
        (Decimal("12999999999999999999.999999987"), "12999999999999999999.999999987"),
        (Decimal("99999999999999999999999999999.999999999"), "99999999999999999999999999999.999999999"),
    ],
)
def test_number_is_exact_plain_text(value, text):
    assert number(value) == text


@given(st.integers(-(10**38) + 1, 10**38 - 1), st.integers(0, 9))
def test_a_report_number_is_every_digit_of_the_value_without_trailing_zeros(nanos, padding):
    # Any Decimal(38, 9) value, as ClickHouse hands it back (9 places) or with more zeros
    value = Decimal(f"{nanos}{'0' * padding}E-{9 + padding}")
    text = jsonable(value)
    assert Decimal(text) == value  # nothing rounded
    assert "E" not in text and not ("." in text and text.endswith(("0", ".")))


@pytest.mark.parametrize("hours", [-4, 0, 9])
def test_times_are_reported_in_utc_whatever_zone_the_client_returned_them_in(hours):
    # clickhouse-connect returns DateTime('UTC') columns in the host's zone: under
    # TZ=America/New_York the UTC day 2024-05-01 was reported as 2024-04-30T20:00:00-04:00.
    utc_day = datetime(2024, 5, 1, tzinfo=UTC)
    assert jsonable(utc_day.astimezone(timezone(timedelta(hours=hours)))) == "2024-05-01T00:00:00+00:00"
    assert jsonable(datetime(2024, 5, 1)) == "2024-05-01T00:00:00+00:00"  # naive: read as UTC
