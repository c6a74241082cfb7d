"""Time columns sent as integer ticks: the bytes clickhouse-connect writes are the ones it wrote
for the datetimes, and a column it must judge itself (a naive datetime) is left to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.storage import time_columns

PROPERTY = settings(max_examples=300, deadline=None)

# clickhouse-connect floors a float timestamp: exact to the microsecond while a second's
# float spacing is under a microsecond, that is before 2242. Beyond it only ours is exact.
FLOAT_EXACT_UNTIL = datetime(2200, 1, 1)

zones = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
aware = st.datetimes(min_value=datetime(1900, 1, 1), max_value=FLOAT_EXACT_UNTIL, timezones=zones)
after_1970 = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2105, 1, 1), timezones=zones)


def written(type_name: str, column: Any) -> bytes:
    column_type = get_from_name(type_name)
    context = InsertContext("t", ["c"], [column_type])
    context.column_name = "c"
    dest = bytearray()
    column_type.write_column(list(column), dest, context)
    return bytes(dest)


@PROPERTY
@given(st.lists(aware, min_size=1, max_size=20))
def test_microsecond_ticks_write_the_bytes_the_datetimes_did(moments: list[datetime]) -> None:
    ticks = time_columns.microseconds(moments)
    assert all(isinstance(tick, int) for tick in ticks)
    assert written("DateTime64(6, 'UTC')", ticks) == written("DateTime64(6, 'UTC')", moments)


@PROPERTY
@given(st.lists(aware, min_size=1, max_size=20))
def test_millisecond_ticks_floor_as_clickhouse_connect_does(moments: list[datetime]) -> None:
    convert = time_columns.repeating(time_columns.milliseconds)
    assert written("DateTime64(3, 'UTC')", convert(moments)) == written("DateTime64(3, 'UTC')", moments)


@PROPERTY
@given(st.lists(after_1970.map(lambda moment: moment.replace(microsecond=0)), min_size=1, max_size=20))
def test_whole_seconds_write_the_bytes_the_datetimes_did(moments: list[datetime]) -> None:
    convert = time_columns.repeating(time_columns.seconds)
    assert written("DateTime('UTC')", convert(moments)) == written("DateTime('UTC')", moments)


@PROPERTY
@given(st.lists(st.tuples(aware, st.decimals(allow_nan=False, allow_infinity=False, places=9, min_value=-(10**20), max_value=10**20)), min_size=1, max_size=20))  # fmt: skip
def test_latest_pairs_write_the_bytes_the_pairs_did(pairs: list[tuple[datetime, Decimal]]) -> None:
    type_name = "SimpleAggregateFunction(max, Tuple(DateTime64(6, 'UTC'), Decimal(38, 9)))"
    converted = time_columns.repeating(time_columns.latest_pairs)(pairs)
    assert [value for _, value in converted] == [value for _, value in pairs]
    assert written(type_name, converted) == written(type_name, pairs)


def test_ticks_stay_exact_where_a_float_timestamp_is_not() -> None:
    last = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert time_columns.microseconds([last]) == [253_402_300_799_999_999]
    assert time_columns.milliseconds([last]) == [253_402_300_799_999]
    before_epoch = datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)
    assert time_columns.milliseconds([before_epoch]) == [-500]
    assert time_columns.seconds([before_epoch]) == [-1]  # floored, never towards zero


def test_a_column_holding_a_naive_datetime_is_left_to_clickhouse_connect() -> None:
    column = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 1))  # the second one naive
    assert time_columns.microseconds(column) is column
    assert time_columns.repeating(time_columns.milliseconds)(column) is column
    pairs = [(datetime(2026, 12, 1), Decimal(1))]
    assert time_columns.latest_pairs(pairs) is pairs
    assert time_columns.repeating(time_columns.latest_pairs)(pairs) is pairs


def test_repeating_converts_each_distinct_value_once_and_keeps_the_order() -> None:
    seen: list[list[int]] = []

    def double(column: Any) -> Any:
        seen.append(list(column))
        return [value * 2 for value in column]

    assert time_columns.repeating(double)([3, 1, 3, 3, 2, 1]) == [6, 2, 6, 6, 4, 2]
    assert seen == [[3, 1, 2]]


def test_ticks_finer_than_a_microsecond_are_refused() -> None:
    with pytest.raises(ValueError, match="finer than microseconds"):
        time_columns.ticks(1_000_000_000)
    with pytest.raises(ValueError, match="finer than microseconds"):
        time_columns.ticks(7)  # not a whole number of microseconds a tick


def test_rows_become_columns_with_the_named_ones_converted() -> None:
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [("a", moment, 1), ("b", moment + timedelta(seconds=1), 2)]
    columns = time_columns.as_columns(rows, {1: time_columns.seconds})
    assert [list(column) for column in columns] == [["a", "b"], [1_796_083_200, 1_796_083_201], [1, 2]]
