"""1-minute tumbling windows per (meter, customer, group), merged the way ClickHouse merges.

Each column has a merge that is associative and commutative (sum, max, set union, max of
(time, value)), so partial rollups from any number of flushes, late events included, add
up to the same totals as one pass over all raw events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal
from operator import itemgetter
from typing import Final, assert_never

import orjson

from bastionary.metering.meters import Aggregation
from bastionary.metering.ports import RollupRow, new_row
from bastionary.metering.readings import Group, Reading

WINDOW_SECONDS = 60
ZERO = Decimal(0)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUM_CONTEXT = Context(prec=38)  # Decimal(38, 9): the default 28 digits would round large sums


def window_start(moment: datetime) -> datetime:
    return datetime.fromtimestamp(window_second(int(moment.timestamp())), tz=UTC)


def window_second(second: int) -> int:
    """The start of the window holding Unix second ``second``, in Unix seconds."""
    return second - second % WINDOW_SECONDS


def group_key(group: Group) -> str:
    """Canonical text of a group: the ORDER BY column that keeps groups apart."""
    return orjson.dumps(dict(group), option=orjson.OPT_SORT_KEYS).decode() if group else ""


@dataclass(slots=True)
class RollupCell:
    """One key's partial results; :meth:`RollupBuilder.add_event` merges each reading in."""

    value_sum: Decimal = ZERO
    event_count: int = 0
    value_max: Decimal | None = None
    # Made at a cell's first unique_count reading: an empty set is 216 bytes, and most cells are
    # of other aggregations (9.2 MB of a 44,000-event flush's plan was empty sets).
    unique_values: set[str] | None = None
    latest: tuple[datetime, Decimal] | None = None


# Module names for the members :meth:`RollupBuilder.add_event` compares with every reading.
_SUM: Final = Aggregation.SUM
_COUNT: Final = Aggregation.COUNT
_MAX: Final = Aggregation.MAX
_UNIQUE_COUNT: Final = Aggregation.UNIQUE_COUNT
_LATEST: Final = Aggregation.LATEST


# A series is one (meter, customer, group); its cells are keyed by (window start, ingested
# minute), in Unix seconds. Two levels instead of one 5-tuple key: a flush's rows are sorted by
# series (a few thousand) and then by minutes within each (a handful), instead of every cell by
# its whole key, and the minute key is built once per event, not per reading.
SeriesKey = tuple[str, str, Group]
MinuteKey = tuple[int, int]

ROLLUP_COLUMNS = RollupRow._fields


class RollupBuilder:
    def __init__(self) -> None:
        self.series: dict[SeriesKey, dict[MinuteKey, RollupCell]] = {}

    def add(self, customer_id: str, event_time: datetime, reading: Reading, ingested_at: datetime = EPOCH) -> None:
        self.add_at(customer_id, event_time, int(event_time.timestamp()), reading, int(ingested_at.timestamp()))

    def add_at(
        self, customer_id: str, event_time: datetime, event_second: int, reading: Reading, ingested_second: int
    ) -> None:
        """:meth:`add`, with the event's and the record's times already in Unix seconds."""
        self.add_event(customer_id, event_time, event_second, (reading,), ingested_second)

    def add_event(
        self,
        customer_id: str,
        event_time: datetime,
        event_second: int,
        readings: Iterable[Reading],
        ingested_second: int,
    ) -> None:
        """Every reading of one event (times in Unix seconds), in one call: this runs for each
        reading of a flush, so the windows are computed once per event and the cell's merge is
        inline (a method call per reading cost as much as the merge)."""
        minutes = (event_second - event_second % WINDOW_SECONDS, ingested_second - ingested_second % WINDOW_SECONDS)
        all_series = self.series
        for meter, aggregation, group, value, unique in readings:
            series_key = (meter, customer_id, group)
            cells = all_series.get(series_key)
            if cells is None:
                cells = all_series[series_key] = {}
            cell = cells.get(minutes)
            if cell is None:
                cell = cells[minutes] = RollupCell()
            cell.event_count += 1
            if aggregation is _COUNT:
                continue  # event_count is every cell's
            if value is None:
                value = ZERO
            if aggregation is _SUM:
                cell.value_sum = _SUM_CONTEXT.add(cell.value_sum, value)
            elif aggregation is _MAX:
                if cell.value_max is None or value > cell.value_max:
                    cell.value_max = value
            elif aggregation is _UNIQUE_COUNT:
                if cell.unique_values is None:
                    cell.unique_values = {unique or ""}
                else:
                    cell.unique_values.add(unique or "")
            elif aggregation is _LATEST:
                candidate = (event_time, value)
                # Ties on time go to the larger value, so the result never depends on arrival order.
                if cell.latest is None or candidate > cell.latest:
                    cell.latest = candidate
            else:
                assert_never(aggregation)

    def rows(self) -> list[RollupRow]:
        times: dict[int, datetime] = {}
        # Per group, its text and its values: rows of one group share one dict, which nothing
        # changes (building one per row was a tenth of what rows() cost).
        groups: dict[Group, tuple[str, dict[str, str]]] = {}
        keyed = []
        for (meter, customer_id, group), cells in self.series.items():
            described = groups.get(group)
            if described is None:
                described = groups[group] = (group_key(group), dict(group))
            keyed.append(((meter, customer_id, described[0]), described[1], cells))
        # The order rows were always written in, whatever order events came in: by their text
        # key (meter, customer, group text, window, ingested minute), the table's sorting key,
        # so the server's sort of an inserted block finds it sorted. Sorting series first gives
        # that order because no two series of a meter and customer share a group text: a meter
        # reads its dimensions in one order (sorted by name), so equal values make equal groups.
        keyed.sort(key=_sort_key)
        rows = []
        for (meter, customer_id, text), values, cells in keyed:
            for (start, ingested), cell in sorted(cells.items()) if len(cells) > 1 else cells.items():
                window = times.get(start)
                if window is None:
                    window = times[start] = datetime.fromtimestamp(start, tz=UTC)
                minute = times.get(ingested)
                if minute is None:
                    minute = times[ingested] = datetime.fromtimestamp(ingested, tz=UTC)
                # Every field, in the column order, through tuple.__new__ (see ports.new_row).
                rows.append(
                    new_row(
                        RollupRow,
                        (
                            meter,
                            customer_id,
                            text,
                            values,
                            window,
                            minute,
                            cell.value_sum,
                            cell.event_count,
                            cell.value_max,
                            sorted(cell.unique_values) if cell.unique_values else [],
                            cell.latest or _NO_LATEST,
                        ),
                    )
                )
        return rows


_sort_key = itemgetter(0)
_NO_LATEST = (EPOCH, ZERO)
