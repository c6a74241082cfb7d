"""Analyst-facing query builders. Each returns ``(sql, parameters)``; values are never
formatted into SQL text, only identifiers chosen from fixed tables below."""

from __future__ import annotations

from datetime import datetime
from typing import assert_never

from bastionary.metering.meters import Aggregation, Meter

QueryParameters = dict[str, str | datetime | list[str]]  # bound by name in the SQL text: {name:Type}


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


WINDOW_FUNCTIONS = {"MINUTE": "toStartOfMinute", "HOUR": "toStartOfHour", "DAY": "toStartOfDay"}
WINDOW_SECONDS = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}


def usage_query(
    meter: Meter,
    customer: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    window: str | None = None,
    group_by: list[str] | tuple[str, ...] = (),
) -> tuple[str, QueryParameters]:
    """Totals of one meter; ``start`` is inclusive and ``end`` exclusive, both in UTC.

    Without a window, one row per customer and group for the whole range; ranges are cut at
    minute boundaries, the rollup resolution.
    """
    unknown = [g for g in group_by if g not in meter.group_by]
    if unknown:
        raise ValueError(
            f"meter {meter.key} has no dimension {', '.join(unknown)}; it has: {', '.join(meter.group_by) or 'none'}"
        )
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
        win_start = f"{fn}(window_start)"
        win_end = f"{win_start} + INTERVAL {WINDOW_SECONDS[window.upper()]} SECOND"
    else:
        win_start = "min(window_start)" if start is None else "{start:DateTime('UTC')}"
        win_end = "max(window_start) + INTERVAL 60 SECOND" if end is None else "{end:DateTime('UTC')}"
    keys = ["customer_id"] + group_cols + (["ws"] if window else [])
    sql = (
        f"SELECT customer_id, {win_start} AS ws, {win_end} AS we, {group_expr} AS grp,"
        f" {value_expression(meter.aggregation)} AS value"
        f" FROM usage_rollup_1m WHERE {' AND '.join(where)}"
        f" GROUP BY {', '.join(keys)}"
        f" ORDER BY customer_id{', ws' if window else ''}, grp"
    )
    return sql, params
