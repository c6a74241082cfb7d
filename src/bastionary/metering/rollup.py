"""1-minute tumbling windows per (meter, customer, group), merged the way ClickHouse merges.

Each column has a merge that is associative and commutative (sum, max, set union, max of
(time, value)), so partial rollups from any number of flushes, late events included, add
up to the same totals as one pass over all raw events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import assert_never

import orjson

from bastionary.metering.meters import Aggregation
from bastionary.metering.ports import RollupRow
from bastionary.metering.readings import Group, Reading

WINDOW_SECONDS = 60
ZERO = Decimal(0)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUM_CONTEXT = Context(prec=38)  # Decimal(38, 9): the default 28 digits would round large sums


def window_start(moment: datetime) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % WINDOW_SECONDS, tz=UTC)


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
        value = reading.value if reading.value is not None else ZERO
        match reading.aggregation:
            case Aggregation.SUM:
                self.value_sum = _SUM_CONTEXT.add(self.value_sum, value)
            case Aggregation.COUNT:
                pass  # event_count is every cell's
            case Aggregation.MAX:
                if self.value_max is None or value > self.value_max:
                    self.value_max = value
            case Aggregation.UNIQUE_COUNT:
                self.unique_values.add(reading.unique or "")
            case Aggregation.LATEST:
                candidate = (event_time, value)
                # Ties on time go to the larger value, so the result never depends on arrival order.
                if self.latest is None or candidate > self.latest:
                    self.latest = candidate
            case _:
                assert_never(reading.aggregation)


RollupKey = tuple[str, str, str, datetime, datetime]  # meter, customer, group_key, window, ingested minute

ROLLUP_COLUMNS = RollupRow._fields


class RollupBuilder:
    def __init__(self) -> None:
        self.cells: dict[RollupKey, RollupCell] = {}
        self._groups: dict[RollupKey, Group] = {}

    def add(self, customer_id: str, event_time: datetime, reading: Reading, ingested_at: datetime = EPOCH) -> None:
        key = (
            reading.meter,
            customer_id,
            group_key(reading.group),
            window_start(event_time),
            window_start(ingested_at),
        )
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = RollupCell()
            self._groups[key] = reading.group
        cell.add(reading, event_time)

    def rows(self) -> list[RollupRow]:
        rows = []
        for key in sorted(self.cells):
            cell = self.cells[key]
            meter, customer_id, gkey, start, ingested_minute = key
            rows.append(
                RollupRow(
                    meter=meter,
                    customer_id=customer_id,
                    group_key=gkey,
                    group_values=dict(self._groups[key]),
                    window_start=start,
                    ingested_minute=ingested_minute,
                    value_sum=cell.value_sum,
                    event_count=cell.event_count,
                    value_max=cell.value_max,
                    unique_values=sorted(cell.unique_values),
                    latest=cell.latest or (EPOCH, ZERO),
                )
            )
        return rows
