"""Helpers shared by the integration tests: publishing workloads and reading totals back."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from bastionary.catalog import load_catalog
from bastionary.kafka import publish_records, read_topic
from bastionary.storage.queries import usage_query


def publish(stack, records) -> dict[int, int]:
    return asyncio.run(publish_records(stack.bootstrap, stack.usage_topic, records))


def dead_letters(stack, expect: int | None = None, idle: float = 3.0):
    return asyncio.run(read_topic(stack.bootstrap, stack.dlq_topic, idle_seconds=idle, expect=expect))


def pipeline_totals(stack) -> dict[str, dict[tuple, Decimal]]:
    """Totals per meter, customer and full group, as the analyst-facing query computes them."""
    out = {}
    for meter in load_catalog(None).meters:
        sql, params = usage_query(meter, group_by=list(meter.group_by))
        rows = stack.client.query(sql, parameters=params).result_rows
        out[meter.key] = {(c, tuple(sorted(g.items()))): Decimal(v) for c, _, _, g, v in rows}
    return out


def assert_totals_equal(actual, expected) -> None:
    for meter, truth in expected.items():
        got = actual.get(meter, {})
        missing = {k: v for k, v in truth.items() if got.get(k) != v}
        extra = {k: v for k, v in got.items() if k not in truth}
        assert not missing and not extra, (
            f"{meter}: {len(missing)} wrong or missing, {len(extra)} unexpected; "
            f"e.g. {list(missing.items())[:3]} got {[got.get(k) for k in list(missing)[:3]]}"
        )
