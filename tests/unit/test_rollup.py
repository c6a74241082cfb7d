"""1-minute rollups: window flooring, per-aggregation cells, and split-invariant merging."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.catalog import Aggregation
from bastionary.metering.readings import Reading
from bastionary.metering.rollup import (
    EPOCH,
    ROLLUP_COLUMNS,
    ZERO,
    RollupBuilder,
    group_key,
    window_start,
)

UTC = UTC
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- window_start ----------------------------------------------------------------------


def test_window_start_floors_to_the_minute():
    assert window_start(at(0)) == T0
    assert window_start(at(59.999999)) == T0
    assert window_start(at(60)) == at(60)
    assert window_start(at(61)) == at(60)


def test_window_start_is_in_utc_whatever_the_input_offset():
    plus_two = timezone(timedelta(hours=2))
    start = window_start(datetime(2024, 5, 1, 14, 0, 30, tzinfo=plus_two))
    assert start == T0
    assert start.tzinfo == UTC
    # Half-hour offsets still land on the UTC minute.
    india = timezone(timedelta(hours=5, minutes=30))
    assert window_start(datetime(2024, 5, 1, 17, 30, 45, tzinfo=india)) == T0


@settings(database=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_window_start_properties(moment):
    start = window_start(moment)
    assert start.tzinfo == UTC
    assert (start.second, start.microsecond) == (0, 0)
    assert start <= moment < start + timedelta(minutes=1)


# --- group_key -------------------------------------------------------------------------


def test_group_key_is_canonical_json_or_empty():
    assert group_key(()) == ""
    assert group_key((("model", "small"), ("region", "eu"))) == '{"model":"small","region":"eu"}'
    assert group_key((("region", "eu"), ("model", "small"))) == group_key((("model", "small"), ("region", "eu")))
    assert group_key((("model", ""),)) != group_key(())


# --- RollupBuilder per aggregation -----------------------------------------------------


def r(meter: str, aggregation: Aggregation, value=None, unique=None, group=()) -> Reading:
    return Reading(meter, aggregation, group, value=None if value is None else Decimal(value), unique=unique)


def single_row(builder: RollupBuilder) -> dict:
    (row,) = builder.rows()
    return dict(zip(ROLLUP_COLUMNS, row, strict=True))


def test_sum_cell():
    b = RollupBuilder()
    for v in ("1.5", "2", "-0.5"):
        b.add("c1", at(5), r("tokens", Aggregation.SUM, v))
    row = single_row(b)
    assert row["value_sum"] == Decimal(3)
    assert row["event_count"] == 3
    assert row["value_max"] is None
    assert row["unique_values"] == []
    assert row["latest"] == (EPOCH, ZERO)


def test_count_cell():
    b = RollupBuilder()
    for s in (1, 2, 3, 4):
        b.add("c1", at(s), r("requests", Aggregation.COUNT))
    row = single_row(b)
    assert (row["event_count"], row["value_sum"], row["value_max"]) == (4, ZERO, None)


def test_max_cell_with_negative_values():
    b = RollupBuilder()
    for v in ("-7", "-2", "-9"):
        b.add("c1", at(1), r("temp", Aggregation.MAX, v))
    row = single_row(b)
    assert row["value_max"] == Decimal(-2)
    assert row["event_count"] == 3


def test_unique_count_cell_is_a_sorted_set():
    b = RollupBuilder()
    for u in ("u2", "u1", "u2", "u3", "u1"):
        b.add("c1", at(1), r("users", Aggregation.UNIQUE_COUNT, unique=u))
    row = single_row(b)
    assert row["unique_values"] == ["u1", "u2", "u3"]
    assert row["event_count"] == 5


def test_latest_cell_takes_the_latest_event_time_not_the_last_arrival():
    b = RollupBuilder()
    b.add("c1", at(30), r("seats", Aggregation.LATEST, "10"))
    b.add("c1", at(10), r("seats", Aggregation.LATEST, "99"))  # arrives later, happened earlier
    assert single_row(b)["latest"] == (at(30), Decimal(10))


def test_latest_tie_on_time_goes_to_the_larger_value_in_any_order():
    for values in (("5", "3"), ("3", "5")):
        b = RollupBuilder()
        for v in values:
            b.add("c1", at(10), r("seats", Aggregation.LATEST, v))
        assert single_row(b)["latest"] == (at(10), Decimal(5))


def test_latest_tie_across_offsets_is_still_a_tie():
    b = RollupBuilder()
    b.add("c1", at(10), r("seats", Aggregation.LATEST, "3"))
    b.add("c1", at(10).astimezone(timezone(timedelta(hours=-5))), r("seats", Aggregation.LATEST, "4"))
    assert single_row(b)["latest"][1] == Decimal(4)


def test_cells_are_kept_apart_by_meter_customer_group_and_window():
    b = RollupBuilder()
    g_small = (("model", "small"),)
    g_large = (("model", "large"),)
    b.add("c1", at(1), r("tokens", Aggregation.SUM, "1", group=g_small))
    b.add("c1", at(2), r("tokens", Aggregation.SUM, "2", group=g_small))  # same cell
    b.add("c1", at(3), r("tokens", Aggregation.SUM, "4", group=g_large))
    b.add("c2", at(4), r("tokens", Aggregation.SUM, "8", group=g_small))
    b.add("c1", at(65), r("tokens", Aggregation.SUM, "16", group=g_small))  # next window
    b.add("c1", at(5), r("other", Aggregation.SUM, "32", group=g_small))
    rows = [dict(zip(ROLLUP_COLUMNS, row, strict=True)) for row in b.rows()]
    summary = [(x["meter"], x["customer_id"], x["group_values"], x["window_start"], x["value_sum"]) for x in rows]
    assert summary == [
        ("other", "c1", {"model": "small"}, T0, Decimal(32)),
        ("tokens", "c1", {"model": "large"}, T0, Decimal(4)),
        ("tokens", "c1", {"model": "small"}, T0, Decimal(3)),
        ("tokens", "c1", {"model": "small"}, at(60), Decimal(16)),
        ("tokens", "c2", {"model": "small"}, T0, Decimal(8)),
    ]
    assert rows[1]["group_key"] == '{"model":"large"}'


def test_rows_match_the_column_list():
    b = RollupBuilder()
    b.add("c1", at(1), r("requests", Aggregation.COUNT))
    assert len(b.rows()[0]) == len(ROLLUP_COLUMNS)
    assert RollupBuilder().rows() == []


# --- split invariance: partial rollups merged like ClickHouse == one pass --------------

METERS = {
    "s": Aggregation.SUM,
    "c": Aggregation.COUNT,
    "m": Aggregation.MAX,
    "u": Aggregation.UNIQUE_COUNT,
    "l": Aggregation.LATEST,
}

decimals = st.integers(min_value=-(10**15), max_value=10**15).map(lambda n: Decimal(n).scaleb(-9))


@st.composite
def readings_with_context(draw):
    meter = draw(st.sampled_from(sorted(METERS)))
    aggregation = METERS[meter]
    group = draw(st.sampled_from([(), (("model", "a"),), (("model", "b"),)]))
    customer = draw(st.sampled_from(["c1", "c2"]))
    # A few windows, few distinct times so that LATEST ties really happen.
    moment = T0 + timedelta(seconds=draw(st.sampled_from([0, 0.5, 30, 59.999999, 60, 90, 185])))
    value = draw(decimals) if aggregation in (Aggregation.SUM, Aggregation.MAX, Aggregation.LATEST) else None
    if aggregation is Aggregation.LATEST:
        value = draw(st.sampled_from([Decimal(1), Decimal(2), Decimal(-3)]))
    unique = draw(st.sampled_from(["x", "y", "z", "1"])) if aggregation is Aggregation.UNIQUE_COUNT else None
    return customer, moment, Reading(meter, aggregation, group, value=value, unique=unique)


def build(items) -> list[tuple]:
    builder = RollupBuilder()
    for customer, moment, reading in items:
        builder.add(customer, moment, reading)
    return builder.rows()


def clickhouse_merge(row_sets: list[list[tuple]]) -> dict:
    """What AggregatingMergeTree makes of the partial rows: per key, each column's merge."""
    merged: dict = {}
    for rows in row_sets:
        for row in rows:
            meter, customer, gkey, gvalues, start, ingested, vsum, count, vmax, uniques, latest = row
            key = (meter, customer, gkey, start, ingested)
            if key not in merged:
                merged[key] = [gvalues, vsum, count, vmax, set(uniques), latest]
                continue
            cur = merged[key]
            assert cur[0] == gvalues
            cur[1] += vsum
            cur[2] += count
            cur[3] = vmax if cur[3] is None else cur[3] if vmax is None else max(cur[3], vmax)
            cur[4] |= set(uniques)
            cur[5] = max(cur[5], latest)
    return {k: (v[0], v[1], v[2], v[3], sorted(v[4]), v[5]) for k, v in merged.items()}


@settings(max_examples=200, deadline=None, database=None)
@given(
    items=st.lists(readings_with_context(), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_partial_rollups_merge_to_the_single_pass(items, cuts, order):
    single = clickhouse_merge([build(items)])

    # Split the stream into arbitrary consecutive chunks (flushes) ...
    bounds = sorted({0, len(items), *(min(c, len(items)) for c in cuts)})
    chunks = [items[a:b] for a, b in itertools.pairwise(bounds)]
    assert sum(len(c) for c in chunks) == len(items)
    # ... flushed in any order (late events, replays of other partitions).
    order.shuffle(chunks)
    merged = clickhouse_merge([build(chunk) for chunk in chunks])
    assert merged == single

    # One flush per event is the extreme split.
    assert clickhouse_merge([build([item]) for item in items]) == single


@settings(max_examples=100, deadline=None, database=None)
@given(items=st.lists(readings_with_context(), max_size=30), order=st.randoms(use_true_random=False))
def test_single_pass_does_not_depend_on_arrival_order(items, order):
    shuffled = list(items)
    order.shuffle(shuffled)
    assert build(shuffled) == build(items)


@settings(max_examples=100, deadline=None, database=None)
@given(items=st.lists(readings_with_context(), max_size=40))
def test_rows_come_in_the_table_s_sorting_key_order(items):
    """(meter, customer_id, group_key, window_start, ingested_minute): usage_rollup_1m's ORDER BY,
    so the server's sort of the inserted block finds it sorted."""
    builder = RollupBuilder()
    for index, (customer, moment, reading) in enumerate(items):
        builder.add(customer, moment, reading, ingested_at=T0 + timedelta(minutes=index % 3))
    keys = [
        (row.meter, row.customer_id, row.group_key, row.window_start, row.ingested_minute) for row in builder.rows()
    ]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
