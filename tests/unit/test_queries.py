"""Analyst query builders: values only ever travel as parameters, never inside the SQL text."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastionary.catalog import parse_catalog
from bastionary.metering.meters import Aggregation, behaviour
from bastionary.storage.queries import usage_query, value_expression

CATALOG = parse_catalog(
    {
        "meters": [
            {
                "key": "llm_tokens",
                "event_type": "llm.completion",
                "aggregation": "SUM",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model", "region": "$.region"},
            },
            {"key": "llm_requests", "event_type": "llm.completion", "aggregation": "COUNT"},
            {"key": "peak_gb", "event_type": "storage.sampled", "aggregation": "MAX", "value_property": "$.gb"},
            {"key": "users", "event_type": "user.active", "aggregation": "UNIQUE_COUNT", "value_property": "$.u"},
            {"key": "seats", "event_type": "seats.updated", "aggregation": "LATEST", "value_property": "$.n"},
        ]
    }
)
TOKENS = CATALOG.meter("llm_tokens")
START = datetime(2024, 5, 1, tzinfo=UTC)
END = datetime(2024, 6, 1, tzinfo=UTC)
PLACEHOLDER = re.compile(r"\{(\w+):([^}]+)\}")


def placeholders(sql: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, type_ in PLACEHOLDER.findall(sql):
        assert found.setdefault(name, type_) == type_, f"{name} used with two types"
    return found


def test_minimal_query():
    sql, params = usage_query(TOKENS)
    assert params == {"meter": "llm_tokens"}
    assert placeholders(sql) == {"meter": "String"}
    assert "FROM usage_rollup_1m" in sql
    assert "WHERE meter = {meter:String}" in sql
    assert "sum(value_sum) AS value" in sql
    assert "GROUP BY customer_id ORDER BY customer_id, grp" in sql
    assert "map() AS grp" in sql
    # Without a range, the window spans the data found.
    assert "min(window_start) AS ws" in sql
    assert "max(window_start) + INTERVAL 60 SECOND AS we" in sql
    assert "llm_tokens" not in sql


def test_every_filter_is_a_typed_placeholder_and_no_value_is_in_the_sql():
    customer = "acme'; DROP TABLE usage_events; --"
    sql, params = usage_query(TOKENS, customer=customer, start=START, end=END, window="day", group_by=["region"])
    assert params == {"meter": "llm_tokens", "customer": customer, "start": START, "end": END, "g0": "region"}
    assert placeholders(sql) == {
        "meter": "String",
        "customer": "String",
        "start": "DateTime('UTC')",
        "end": "DateTime('UTC')",
        "g0": "String",
    }
    assert set(placeholders(sql)) == set(params)
    for value in ("llm_tokens", "acme", "DROP", "--", "region", "2024"):
        assert value not in sql
    # The only quotes left once the placeholders are removed: none.
    assert "'" not in PLACEHOLDER.sub("", sql)
    assert "customer_id = {customer:String}" in sql
    assert "window_start >= {start:DateTime('UTC')}" in sql  # start inclusive
    assert "window_start < {end:DateTime('UTC')}" in sql  # end exclusive


def test_range_without_window_reports_the_requested_bounds():
    sql, _ = usage_query(TOKENS, start=START, end=END)
    assert "{start:DateTime('UTC')} AS ws" in sql
    assert "{end:DateTime('UTC')} AS we" in sql


@pytest.mark.parametrize(
    ("window", "function", "length"),
    [
        ("MINUTE", "toStartOfMinute", "1 MINUTE"),
        ("hour", "toStartOfHour", "1 HOUR"),
        ("Day", "toStartOfDay", "1 DAY"),
    ],
)
def test_windows(window, function, length):
    sql, _ = usage_query(TOKENS, window=window)
    assert f"{function}(window_start) AS ws" in sql
    assert f"{function}(window_start) + INTERVAL {length} AS we" in sql
    assert f"GROUP BY customer_id, {function}(window_start)" in sql


def test_month_windows_are_reported_as_utc_times():
    sql, _ = usage_query(TOKENS, window="month")
    assert "toDateTime(toStartOfMonth(window_start), 'UTC') AS ws" in sql
    assert "toDateTime(toStartOfMonth(window_start), 'UTC') + INTERVAL 1 MONTH AS we" in sql


def test_a_range_cuts_its_first_and_last_windows():
    sql, _ = usage_query(TOKENS, start=START, end=END, window="day")
    assert "greatest(toStartOfDay(window_start), {start:DateTime('UTC')}) AS ws" in sql
    assert "least(toStartOfDay(window_start) + INTERVAL 1 DAY, {end:DateTime('UTC')}) AS we" in sql


def test_filters_are_typed_placeholders_on_known_dimensions():
    sql, params = usage_query(TOKENS, filters={"model": "m'1"})
    assert "group_values[{fk0:String}] = {fv0:String}" in sql
    assert params["fk0"] == "model" and params["fv0"] == "m'1"
    with pytest.raises(ValueError, match="no dimension colour"):
        usage_query(TOKENS, filters={"colour": "red"})


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="range is empty"):
        usage_query(TOKENS, start=END, end=START)


def test_group_by_dimensions_are_parameters_too():
    sql, params = usage_query(TOKENS, group_by=["region", "model"])
    assert (params["g0"], params["g1"]) == ("region", "model")
    assert "map({g0:String}, group_values[{g0:String}], {g1:String}, group_values[{g1:String}]) AS grp" in sql
    assert "GROUP BY customer_id, group_values[{g0:String}], group_values[{g1:String}]" in sql


def test_unknown_group_by_dimension_is_a_value_error():
    with pytest.raises(ValueError, match=r"llm_tokens has no dimension colour, size; it has: model, region"):
        usage_query(TOKENS, group_by=["model", "colour", "size"])
    with pytest.raises(ValueError, match="it has: none"):
        usage_query(CATALOG.meter("llm_requests"), group_by=["model"])


@pytest.mark.parametrize("meter", CATALOG.meters, ids=lambda m: m.aggregation.value)
def test_value_expression_follows_the_aggregation(meter):
    sql, _ = usage_query(meter)
    assert f"{value_expression(meter.aggregation)} AS value" in sql


def test_value_expressions_match_the_rollup_merges():
    assert {a: value_expression(a) for a in Aggregation} == {
        Aggregation.SUM: "sum(value_sum)",
        Aggregation.COUNT: "toDecimal128(sum(event_count), 9)",
        Aggregation.MAX: "max(value_max)",
        Aggregation.UNIQUE_COUNT: "toDecimal128(length(groupUniqArrayArray(unique_values)), 9)",
        Aggregation.LATEST: "tupleElement(max(latest), 2)",
    }
    for aggregation in Aggregation:  # each reads the column its behaviour names
        assert behaviour(aggregation).rollup_column in value_expression(aggregation)


def _minute_ceiling(moment: datetime) -> datetime:
    """The first minute start at or after ``moment``, by integer microseconds since the epoch."""
    micros = (moment - EPOCH) // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=-(-micros // 60_000_000) * 60_000_000)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(1, 10**7),
)
def test_a_range_moves_each_bound_inside_a_minute_up_to_the_next_one_and_says_so(start, length_ms):
    """Rollups count whole minutes: the rows found answer for whole minutes, and the bounds
    passed (and reported) are those minutes'. Until 2026-12-07 a start at 00:00:30 left out
    the 00:00 minute but was reported as 00:00:30, and a fraction of a second was cut off."""
    end = start + timedelta(milliseconds=length_ms)
    first, last = _minute_ceiling(start), _minute_ceiling(end)
    if first >= last:
        with pytest.raises(ValueError, match="no whole minute"):
            usage_query(TOKENS, start=start, end=end)
        return
    sql, params = usage_query(TOKENS, start=start, end=end)
    assert (params["start"], params["end"]) == (first, last)
    assert "{start:DateTime('UTC')} AS ws" in sql and "{end:DateTime('UTC')} AS we" in sql


def test_a_bound_in_the_last_minute_a_datetime_holds_is_a_clear_error_not_an_overflow():
    with pytest.raises(ValueError, match=r"outside 1970-01-01 \.\. 2106-01-01 UTC"):
        usage_query(TOKENS, start=START, end=datetime(9999, 12, 31, 23, 59, 30, tzinfo=UTC))


MINUS_ONE, PLUS_ONE = timezone(-timedelta(hours=1)), timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # ClickHouse's DateTime cannot parse a year before 1000 (sent as "999-12-31"): a 500.
        (datetime(999, 12, 31, tzinfo=UTC), None),
        (datetime(1, 1, 1, 0, 30, tzinfo=PLUS_ONE), None),  # before year 1 in UTC: an OverflowError
        (None, datetime(9999, 12, 31, 23, tzinfo=MINUS_ONE)),  # after 9999 in UTC: an OverflowError
        # Clamped by ClickHouse, and reported as 1970-01-01 or 2106-02-07T06:28:15.
        (datetime(1000, 1, 1, tzinfo=UTC), None),
        (None, datetime(2200, 1, 1, tzinfo=UTC)),
        (datetime(1969, 12, 31, 23, 58, 30, tzinfo=UTC), None),  # moved up to 23:59, still before
    ],
)
def test_a_bound_outside_the_range_of_usage_times_is_a_clear_error(start, end):
    with pytest.raises(ValueError, match=r"outside 1970-01-01 \.\. 2106-01-01 UTC"):
        usage_query(TOKENS, start=start, end=end)


def test_the_range_of_usage_times_is_a_range_a_query_takes_whole():
    _, params = usage_query(TOKENS, start=datetime(1970, 1, 1, tzinfo=UTC), end=datetime(2106, 1, 1, tzinfo=UTC))
    assert (params["start"], params["end"]) == (datetime(1970, 1, 1, tzinfo=UTC), datetime(2106, 1, 1, tzinfo=UTC))


def test_a_limit_caps_the_rows_asked_after_their_order():
    sql, params = usage_query(TOKENS, window="minute", limit=100_001)
    assert sql.endswith(" LIMIT {limit:UInt64}") and params["limit"] == 100_001
    assert "LIMIT" not in usage_query(TOKENS)[0]
