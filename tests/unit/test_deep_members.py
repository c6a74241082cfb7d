"""A batch record with one member nested past what msgspec's decoders reach (orjson, which
judged the record, takes 1,024 levels; msgspec about 1,000): that member is rejected, and its
siblings land, also those whose values need the exact decode."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from bastionary.catalog import parse_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits, member_texts
from bastionary.metering.planning import FlushPlanner
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord

NOW_MS = 1772323200000  # 2026-03-01
METERS = MeterIndex(
    parse_catalog(
        {"meters": [{"key": "tokens", "event_type": "llm", "aggregation": "SUM", "value_property": "$.tokens"}]}
    ).meters
)
LIMITS = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))


def event(i: int, tokens: object) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "s",
        "type": "llm",
        "subject": "cust-1",
        "time": "2026-02-28T12:00:00Z",
        "data": {"tokens": tokens},
    }


def test_a_member_nested_past_msgspecs_reach_costs_only_itself(tmp_path: Path):
    deep = "[" * 1000 + "]" * 1000
    body = ("[" + json.dumps(event(1, 1.5)) + "," + json.dumps(event(2, 1))[:-1] + ', "x": ' + deep + "}]").encode()
    planner = FlushPlanner(METERS, RocksDedupeStore(tmp_path / "dedupe", 86400), LIMITS)
    plan = planner.plan("usage.events", 0, 1, [InboundRecord("usage.events", 0, 0, NOW_MS, b"cust-1", body, [])])
    assert [row[0] for row in plan.event_rows] == ["e1"]
    assert [letter.code.value for letter in plan.dead_letters] == ["nesting_too_deep"]


def test_members_are_cut_apart_as_json_has_them():
    members = [b'{"a": "x,]}[{", "b": [1, {"c": "\\"]"}]}', b" 2", b' "s"', b" [[]]"]
    assert member_texts(b"[" + b",".join(members) + b"]") == members
    assert member_texts(b"[]") == []
