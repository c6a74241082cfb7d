"""From one validated event to the readings of every meter it feeds."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any

import orjson

from bastionary.catalog import Aggregation, Catalog, Meter
from bastionary.ingest.cloudevents import UsageEvent
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.ingest.jsonpath import MISSING, extract

VALUE_QUANTUM = Decimal("0.000000001")  # Decimal(38, 9) in ClickHouse
VALUE_LIMIT = Decimal("1e29")  # 38 digits minus the 9 fractional ones
_CONTEXT = Context(prec=38)

Group = tuple[tuple[str, str], ...]


@dataclass(slots=True, frozen=True)
class Reading:
    meter: str
    aggregation: Aggregation
    group: Group
    value: Decimal | None = None  # SUM, MAX, LATEST
    unique: str | None = None  # UNIQUE_COUNT


@dataclass(slots=True, frozen=True)
class _CompiledMeter:
    meter: Meter
    value_steps: tuple[str | int, ...] | None
    group_steps: tuple[tuple[str, tuple[str | int, ...]], ...]


class MeterIndex:
    """The catalog's meters, indexed by CloudEvents ``type`` and with JSONPaths compiled."""

    def __init__(self, catalog: Catalog):
        self._by_type: dict[str, list[_CompiledMeter]] = {}
        for meter in catalog.meters:
            compiled = _CompiledMeter(meter, meter.value_steps, tuple(sorted(meter.group_steps.items())))
            self._by_type.setdefault(meter.event_type, []).append(compiled)

    def readings(self, event: UsageEvent) -> list[Reading]:
        """Every meter's reading, or :class:`Rejection` if any meter cannot read the event.

        All-or-nothing: an event is stored only if every meter it feeds can count it, so the
        raw events table always re-derives the rollups.
        """
        meters = self._by_type.get(event.type)
        if not meters:
            return []
        data = event.data
        out = []
        for compiled in meters:
            meter = compiled.meter
            group = tuple((name, dimension_value(extract(data, steps))) for name, steps in compiled.group_steps)
            aggregation = meter.aggregation
            if aggregation is Aggregation.COUNT:
                out.append(Reading(meter.key, aggregation, group))
                continue
            raw = extract(data, compiled.value_steps)
            if aggregation is Aggregation.UNIQUE_COUNT:
                out.append(Reading(meter.key, aggregation, group, unique=unique_value(meter, raw)))
            else:
                out.append(Reading(meter.key, aggregation, group, value=numeric_value(meter, raw)))
        return out


def numeric_value(meter: Meter, raw: Any) -> Decimal:
    if raw is MISSING:
        raise Rejection(ErrorClass.INVALID_METER_VALUE, f"meter {meter.key}: {meter.value_property} is missing")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise Rejection(
            ErrorClass.INVALID_METER_VALUE, f"meter {meter.key}: {meter.value_property} is not a number: {raw!r}"
        )
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        value = Decimal("NaN")
    try:
        if value.is_finite() and value.copy_abs() < VALUE_LIMIT:
            quantized = value.quantize(VALUE_QUANTUM, rounding=ROUND_HALF_EVEN, context=_CONTEXT)
            if quantized.copy_abs() < VALUE_LIMIT:
                return quantized
    except InvalidOperation:
        pass  # rounds up to 1e29: out of range like the rest
    raise Rejection(
        ErrorClass.INVALID_METER_VALUE,
        f"meter {meter.key}: {meter.value_property} is not a finite number below 1e29: {raw!r}",
    )


def unique_value(meter: Meter, raw: Any) -> str:
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return format(numeric_value(meter, raw).normalize(_CONTEXT), "f")
    raise Rejection(
        ErrorClass.INVALID_METER_VALUE,
        f"meter {meter.key}: {meter.value_property} must be a non-empty string or a number: "
        + ("missing" if raw is MISSING else repr(raw)),
    )


def dimension_value(raw: Any) -> str:
    """Dimensions are strings; a missing one groups under the empty string."""
    if raw is MISSING or raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return str(raw)
    return orjson.dumps(raw, option=orjson.OPT_SORT_KEYS).decode()
