"""The usage tables' time columns as integers, which clickhouse-connect writes as they are.

Given a ``datetime``, clickhouse-connect computes each value's ticks in Python: ``timestamp()``,
a floor and a multiplication, through a method call per value. Given integers, it writes the
column in one call. A flush's rows repeat few times (a rollup row's minutes, an event's broker
time: one per record), so those are converted once per distinct value; an event's own time is
converted by one exact subtraction and division. The values are the same ticks
clickhouse-connect would compute (``tests/unit/test_time_columns.py`` compares the bytes).

Only aware datetimes are converted here: clickhouse-connect reads a naive one in the
process's local time zone, so a column holding one is left to it whole, and stored as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Column = Sequence[Any]
Converter = Callable[[Column], Column]


def ticks(per_second: int) -> Converter:
    """A DateTime64 column at ``per_second`` ticks a second (1,000 for DateTime64(3))."""
    if per_second < 1 or 1_000_000 % per_second:
        raise ValueError(f"DateTime64 at {per_second} ticks a second is kept finer than microseconds")
    tick = timedelta(microseconds=1_000_000 // per_second)

    def convert(column: Column) -> Column:
        try:
            # timedelta // timedelta is exact integer arithmetic, and floors as clickhouse-connect does.
            return [(moment - EPOCH) // tick for moment in column]
        except TypeError:  # naive (or not a datetime): clickhouse-connect's own rules apply
            return column

    return convert


def repeating(convert: Converter) -> Converter:
    """``convert``, once per distinct value of a column whose values repeat."""

    def convert_distinct(column: Column) -> Column:
        distinct = list(dict.fromkeys(column))
        converted = convert(distinct)
        if converted is distinct:
            return column
        by_value = dict(zip(distinct, converted, strict=True))
        return [by_value[moment] for moment in column]

    return convert_distinct


seconds = ticks(1)
milliseconds = ticks(1_000)
microseconds = ticks(1_000_000)


def latest_pairs(column: Column) -> Column:
    """A ``Tuple(DateTime64(6), Decimal)`` column: each pair's time in microseconds."""
    times = [pair[0] for pair in column]
    moments = microseconds(times)
    if moments is times:
        return column
    return [(moment, pair[1]) for moment, pair in zip(moments, column, strict=True)]


def as_columns(rows: Sequence[tuple[Any, ...]], converters: dict[int, Converter]) -> list[Column]:
    """``rows`` turned into columns, each column ``converters`` names converted."""
    columns: list[Column] = list(zip(*rows, strict=True))
    for index, convert in converters.items():
        columns[index] = convert(columns[index])
    return columns
