"""1-minute tumbling windows per (meter, customer, group), merged the way ClickHouse merges.

Each column has a merge that is associative and commutative (sum, max, set union, max of
(time, value)), so partial rollups from any number of flushes, late events included, add
up to the same totals as one pass over all raw events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Context, Decimal

import orjson

from bastionary.catalog import Aggregation
from bastionary.metering.readings import Group, Reading

WINDOW_SECONDS = 60
ZERO = Decimal(0)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SUM_CONTEXT = Context(prec=38)  # Decimal(38, 9): the default 28 digits would round large sums


def window_start(moment: datetime) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % WINDOW_SECONDS, tz=timezone.utc)


def group_key(group: Group) -> str:
    """Canonical text of a group: the ORDER BY column that keeps groups apart."""
    return orjson.dumps(dict(group), option=orjson.OPT_SORT_KEYS).decode() if group else ""


@dataclass(slots=True)
class RollupCell:
    value_sum: Decimal = ZERO
    event_count: int = 0
    value_max: Decimal | None = None
    unique_values: set[str] = field(default_factory=set)
    latest: tuple[datetime, Decimal] | None = None

    def add(self, reading: Reading, event_time: datetime) -> None:
        self.event_count += 1
        value = reading.value
        aggregation = reading.aggregation
        if aggregation is Aggregation.SUM:
            self.value_sum = _SUM_CONTEXT.add(self.value_sum, value)
        elif aggregation is Aggregation.MAX:
            if self.value_max is None or value > self.value_max:
                self.value_max = value
        elif aggregation is Aggregation.UNIQUE_COUNT:
            self.unique_values.add(reading.unique)
        elif aggregation is Aggregation.LATEST:
            candidate = (event_time, value)
            # Ties on time go to the larger value, so the result never depends on arrival order.
            if self.latest is None or candidate > self.latest:
                self.latest = candidate


RollupKey = tuple[str, str, str, datetime, datetime]  # meter, customer, group_key, window, ingested minute

ROLLUP_COLUMNS = (
    "meter",
    "customer_id",
    "group_key",
    "group_values",
    "window_start",
    "ingested_minute",
    "value_sum",
    "event_count",
    "value_max",
    "unique_values",
    "latest",
)


class RollupBuilder:
    def __init__(self) -> None:
        self.cells: dict[RollupKey, RollupCell] = {}
        self._groups: dict[RollupKey, Group] = {}

    def add(self, customer_id: str, event_time: datetime, reading: Reading, ingested_at: datetime = EPOCH) -> None:
        key = (reading.meter, customer_id, group_key(reading.group), window_start(event_time), window_start(ingested_at))
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = RollupCell()
            self._groups[key] = reading.group
        cell.add(reading, event_time)

    def rows(self) -> list[tuple]:
        rows = []
        for key in sorted(self.cells):
            cell = self.cells[key]
            meter, customer_id, gkey, start, ingested_minute = key
            rows.append(
                (
                    meter,
                    customer_id,
                    gkey,
                    dict(self._groups[key]),
                    start,
                    ingested_minute,
                    cell.value_sum,
                    cell.event_count,
                    cell.value_max,
                    sorted(cell.unique_values),
                    cell.latest or (EPOCH, ZERO),
                )
            )
        return rows
