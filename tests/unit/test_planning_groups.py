"""A flush's verdicts do not depend on how its records are grouped for dedupe lookups.

The planner reads the stored sightings of a group of records at once, one multi-get per
second the records arrived in (groups of about ``LOOKUP_GROUP_EVENTS`` events), and settles
them record by record. These tests plan the same flush with groups of one record (a lookup per
record, as before), of a few and of the default size, over repeats, conflicts and keys the
horizon let go, placed across the groups' edges.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bastionary.dedupe import Sighting
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.errors import ErrorClass
from bastionary.metering import planning
from bastionary.metering.planning import FlushPlan, FlushPlanner
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord
from tests.unit.test_examine_pool import CATALOG, LIMITS, NOW_MS, event

HORIZON = 100  # seconds: short, so that records 50 and 150 s after a stored key see it differently
STORED_AT = NOW_MS // 1000


def _record(offset: int, value: object, seconds_later: int) -> InboundRecord:
    return InboundRecord("usage", 0, offset, NOW_MS + seconds_later * 1000, b"cust-1", orjson.dumps(value), [])


def _flush() -> list[InboundRecord]:
    """300 records arriving over five seconds (0, 1 and 2, and 50 and 150 after the stored
    sighting): single events, repeats of them 128 records later (in a later group), repeats
    131 later with another payload (conflicts), batches holding a repeat of the record before,
    and events under a key stored before the flush, seen from inside the horizon (a conflict:
    the stored payload differs) and from outside it (a new event, then its duplicates)."""
    values: list[tuple[object, int]] = []
    for n in range(300):
        if n % 50 == 7:
            values.append((event("stored", tokens=1), 50 if n < 150 else 150))
        elif n >= 128 and n % 9 == 0:
            values.append((event(f"e{n - 128}"), n // 100))  # a repeat, from an earlier group
        elif n >= 131 and n % 13 == 0:
            values.append((event(f"e{n - 131}", tokens=6), n // 100))  # same id, other payload
        elif n % 10 == 3:
            values.append(([event(f"b{n}-{i}") for i in range(5)] + [event(f"e{n - 1}")], n // 100))
        else:
            values.append((event(f"e{n}"), n // 100))
    return [_record(offset, value, seconds) for offset, (value, seconds) in enumerate(values)]


def _plan(path: Path, records: list[InboundRecord]) -> FlushPlan:
    dedupe = RocksDedupeStore(path, HORIZON)
    try:
        digest = bytes(16)  # not the flush's payload: the stored key conflicts unless outside the horizon
        key = dedupe.key("usage", 0, "tests", "stored")
        dedupe.record("usage", 0, [(key, Sighting(0, 0, STORED_AT, digest, 1))], through_offset=0, epoch=1)
        return FlushPlanner(MeterIndex(CATALOG.meters), dedupe, LIMITS).plan("usage", 0, 7, records)
    finally:
        dedupe.close()


def _outcome(plan: FlushPlan) -> tuple[object, ...]:
    return (plan.event_rows, plan.rollup_rows, plan.sightings, plan.dead_letters, plan.stats)


@pytest.mark.parametrize("group_events", [2, 7, 40, planning.LOOKUP_GROUP_EVENTS])
def test_records_grouped_for_lookups_are_judged_as_one_by_one(tmp_path, monkeypatch, group_events):
    records = _flush()
    monkeypatch.setattr(planning, "LOOKUP_GROUP_EVENTS", 1)
    one_by_one = _plan(tmp_path / "one", records)
    monkeypatch.setattr(planning, "LOOKUP_GROUP_EVENTS", group_events)
    grouped = _plan(tmp_path / "grouped", records)
    assert _outcome(grouped) == _outcome(one_by_one)


def test_the_flush_s_repeats_conflicts_and_horizon_are_judged(tmp_path):
    plan = _plan(tmp_path / "d", _flush())
    conflicts = [letter for letter in plan.dead_letters if letter.code is ErrorClass.DUPLICATE_CONFLICT]
    stored = [row for row in plan.event_rows if row.event_id == "stored"]
    # From inside the horizon (50 s after it was stored: records 7, 57 and 107) the stored key
    # conflicts; from outside it (150 s: 157, 207 and 257) it is a new event once, then a
    # duplicate of itself.
    assert len([letter for letter in conflicts if b'"stored"' in letter.value]) == 3
    assert [row.ingest_offset for row in stored] == [157]
    assert len(conflicts) > 3 and plan.stats.duplicates > 2
    assert plan.stats.accepted + plan.stats.duplicates + len(plan.dead_letters) == sum(
        len(orjson.loads(r.value or b"")) if (r.value or b"").startswith(b"[") else 1 for r in _flush()
    )


def _landed(path: Path, flushes: list[list[InboundRecord]]) -> list[int]:
    """The offsets of the records whose event counted, over ``flushes`` planned and recorded in turn."""
    dedupe = RocksDedupeStore(path, HORIZON)
    try:
        planner, counted = FlushPlanner(MeterIndex(CATALOG.meters), dedupe, LIMITS), []
        for records in flushes:
            plan = planner.plan("usage", 0, 7, records)
            dedupe.record("usage", 0, plan.sightings, plan.last_offset, 7)
            counted += [row.ingest_offset for row in plan.event_rows]
        return counted
    finally:
        dedupe.close()


def test_a_copy_past_the_horizon_counts_again_wherever_the_flushes_are_cut(tmp_path):
    """Copies of one event 0, 50, 150, 200 and 310 s after the first (horizon 100 s): the first
    counts, 50 repeats it, 150 is past its horizon and counts again, 200 repeats 150, and 310 is
    past 150's. Until 2026-12-07 a first sighting met earlier in the same flush was judged
    without the horizon, so one flush counted the event once (a backlog, a re-import)."""
    records = [_record(offset, event("again"), seconds) for offset, seconds in enumerate((0, 50, 150, 200, 310))]
    for cut in range(len(records) + 1):
        flushes = [part for part in (records[:cut], records[cut:]) if part]
        assert _landed(tmp_path / f"cut-{cut}", flushes) == [0, 2, 4]
