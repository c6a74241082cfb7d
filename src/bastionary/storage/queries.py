"""Analyst-facing query builders. Each returns ``(sql, parameters)``; values are never
formatted into SQL text, only identifiers chosen from fixed tables below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import assert_never

from bastionary.metering.meters import Aggregation, Meter

QueryParameters = dict[str, str | int | datetime | list[str]]  # bound by name in the SQL text: {name:Type}


def value_expression(aggregation: Aggregation) -> str:
    """How a meter's rollup rows merge into its value, in ClickHouse SQL (Decimal(38, 9))."""
    match aggregation:
        case Aggregation.SUM:
            return "sum(value_sum)"
        case Aggregation.COUNT:
            return "toDecimal128(sum(event_count), 9)"
        case Aggregation.MAX:
            return "max(value_max)"
        case Aggregation.UNIQUE_COUNT:
            return "toDecimal128(length(groupUniqArrayArray(unique_values)), 9)"
        case Aggregation.LATEST:
            return "tupleElement(max(latest), 2)"
        case _:
            assert_never(aggregation)


WINDOW_FUNCTIONS = {
    "MINUTE": "toStartOfMinute",
    "HOUR": "toStartOfHour",
    "DAY": "toStartOfDay",
    "MONTH": "toStartOfMonth",
}
# toStartOfMonth gives a Date; the others a DateTime. Windows are reported as DateTime in UTC.
_AS_TIME = {"MONTH": "toDateTime({}, 'UTC')"}
WINDOW_LENGTHS = {
    "MINUTE": "INTERVAL 1 MINUTE",
    "HOUR": "INTERVAL 1 HOUR",
    "DAY": "INTERVAL 1 DAY",
    "MONTH": "INTERVAL 1 MONTH",
}
WINDOWS = tuple(WINDOW_FUNCTIONS)


def usage_query(
    meter: Meter,
    customer: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    window: str | None = None,
    group_by: list[str] | tuple[str, ...] = (),
    filters: dict[str, str] | None = None,
    limit: int | None = None,
) -> tuple[str, QueryParameters]:
    """Totals of one meter (at most ``limit`` rows); ``start`` is inclusive and ``end`` exclusive, both in UTC.

    Without a window, one row per customer and group for the whole range; ranges are cut at
    minute boundaries, the rollup resolution. With a window (minute, hour, day, month, in
    UTC), a window the range cuts is reported with the range's bound as its start or end:
    the first and last windows may be partial, and say so. ``filters`` keeps the rows whose
    dimension equals the value.
    """
    filters = filters or {}
    unknown = [g for g in (*group_by, *filters) if g not in meter.group_by]
    if unknown:
        raise ValueError(
            f"meter {meter.key} has no dimension {', '.join(unknown)}; it has: {', '.join(meter.group_by) or 'none'}"
        )
    if start is not None and end is not None and start >= end:
        raise ValueError("the range is empty: its start must be before its end")
    # The rollups count whole minutes, so a bound inside a minute moves to the next minute's
    # start, the bound the rows found answer for, and the one reported. (Compared as given, a
    # start with seconds left out its minute but reported its seconds, an end with seconds took
    # its minute whole, and a fraction of a second was cut off by the DateTime parameter.)
    start, end = _minute_up(start), _minute_up(end)
    if start is not None and end is not None and start >= end:
        raise ValueError("the range holds no whole minute: rollups count minutes, and both bounds round up to one")
    params: QueryParameters = {"meter": meter.key}
    where = ["meter = {meter:String}"]
    if customer is not None:
        where.append("customer_id = {customer:String}")
        params["customer"] = customer
    if start is not None:
        where.append("window_start >= {start:DateTime('UTC')}")
        params["start"] = start
    if end is not None:
        where.append("window_start < {end:DateTime('UTC')}")
        params["end"] = end
    for i, (name, value) in enumerate(sorted(filters.items())):
        params[f"fk{i}"], params[f"fv{i}"] = name, value
        where.append(f"group_values[{{fk{i}:String}}] = {{fv{i}:String}}")
    group_cols = []
    for i, name in enumerate(group_by):
        params[f"g{i}"] = name
        group_cols.append(f"group_values[{{g{i}:String}}]")
    group_expr = (
        "map(" + ", ".join(f"{{g{i}:String}}, {col}" for i, col in enumerate(group_cols)) + ")"
        if group_cols
        else "map()"
    )
    if window:
        fn = WINDOW_FUNCTIONS[window.upper()]
        win_start = _AS_TIME.get(window.upper(), "{}").format(f"{fn}(window_start)")
        win_end = f"{win_start} + {WINDOW_LENGTHS[window.upper()]}"
        # A window the range cuts is reported as the part of it the range covers.
        if start is not None:
            win_start = f"greatest({win_start}, {{start:DateTime('UTC')}})"
        if end is not None:
            win_end = f"least({win_end}, {{end:DateTime('UTC')}})"
    else:
        win_start = "min(window_start)" if start is None else "{start:DateTime('UTC')}"
        win_end = "max(window_start) + INTERVAL 60 SECOND" if end is None else "{end:DateTime('UTC')}"
    keys = ["customer_id"] + group_cols + ([f"{WINDOW_FUNCTIONS[window.upper()]}(window_start)"] if window else [])
    sql = (
        f"SELECT customer_id, {win_start} AS ws, {win_end} AS we, {group_expr} AS grp,"
        f" {value_expression(meter.aggregation)} AS value"
        f" FROM usage_rollup_1m WHERE {' AND '.join(where)}"
        f" GROUP BY {', '.join(keys)}"
        f" ORDER BY customer_id{', ws' if window else ''}, grp"
    )
    if limit is not None:
        sql += " LIMIT {limit:UInt64}"
        params["limit"] = limit
    return sql, params


# Usage times run from 1970-01-01 to 2105-12-31 UTC (the rollup windows' DateTime); a bound
# outside would be clamped by ClickHouse (or fail to parse before year 1000) and reported as
# neither the bound given nor one moved to a minute.
FIRST_BOUND = datetime(1970, 1, 1, tzinfo=UTC)
LAST_BOUND = datetime(2106, 1, 1, tzinfo=UTC)


def _minute_up(moment: datetime | None) -> datetime | None:
    """``moment`` (in UTC: an offset may carry seconds) moved up to a minute's start."""
    if moment is None:
        return None
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-01:00 is past the last date Python holds in UTC
        raise ValueError(f"{moment.isoformat()} is outside 1970-01-01 .. 2106-01-01 UTC") from None
    floor = moment.replace(second=0, microsecond=0)
    rounded = floor if floor == moment or floor >= LAST_BOUND else floor + timedelta(minutes=1)
    if not FIRST_BOUND <= rounded <= LAST_BOUND:
        raise ValueError(f"{moment.isoformat()} is outside 1970-01-01 .. 2106-01-01 UTC, the range of usage times")
    return rounded
