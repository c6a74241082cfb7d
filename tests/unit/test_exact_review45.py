"""Exactly-once totals of the usage tables, from a review: a flush whose events span many months
lands (and its replay is dropped by token), instead of stopping the worker at every restart; and
a flush that straddles a key's dedupe horizon, replayed after a crash, counts what it counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_sink_crashes import CRASH_POINTS, HORIZON, Ev, Rec, cluster, letter_id, run

_MANY_MONTHS = """
import json, sys
from datetime import UTC, datetime
from decimal import Decimal
from bastionary.metering.meters import Aggregation
from bastionary.metering.ports import EventRow
from bastionary.metering.readings import Reading
from bastionary.metering.rollup import RollupBuilder
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore

store = ClickHouseUsageStore(open_client("chdb://" + sys.argv[1], "t", create=True))
store.migrate()
broker_time = datetime(2026, 12, 1, tzinfo=UTC)
rows, rollups = [], RollupBuilder()
for n in range(120):  # ten years of monthly usage re-imported: one flush, 120 monthly partitions
    at = datetime(2016 + n // 12, n % 12 + 1, 15, tzinfo=UTC)
    rows.append(EventRow(f"e{n}", "//s", "t", "c", at, "{}", "00" * 16, broker_time, "usage", 1, 0, n, 0))
    rollups.add("c", at, Reading("m", Aggregation.SUM, (), Decimal(2)), broker_time)
counts = []
for _ in range(2):  # the flush, then its replay after a crash: same tokens
    store.insert_events(rows, "usage/0@1/0-119/events")
    store.insert_rollups(rollups.rows(), "usage/0@1/0-119/rollups")
    counts.append([
        store.client.query("SELECT count() FROM usage_events").result_rows[0][0],
        str(store.client.query("SELECT sum(value_sum) FROM usage_rollup_1m").result_rows[0][0]),
    ])
print(json.dumps(counts))
"""


def test_a_flush_of_events_over_more_than_100_months_lands_once(tmp_path):
    """Both tables are partitioned by month; ClickHouse refused an insert block of more than 100
    partitions, so such a flush failed at every replay and its partition never moved on."""
    done = subprocess.run(
        [sys.executable, "-c", _MANY_MONTHS, str(tmp_path / "ch")], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    landed, replayed = json.loads(done.stdout.strip().splitlines()[-1])
    assert landed == [120, "240.000000000"]
    assert replayed == landed  # the replay's inserts are dropped by token, every monthly part of them


_H = int(HORIZON.total_seconds())
# Flush 1 counts k and j. Flush 2 holds, exactly at their horizon, a repeat of k and a conflicting
# copy of j, then, a second past it, a copy of each that counts anew: 3 + 3 + 3 + 5 tokens.
_STRADDLING = [
    Rec(0, Ev("k", 0, 3)),
    Rec(0, Ev("j", 0, 3)),
    Rec(_H, Ev("k", 0, 3)),
    Rec(_H, Ev("j", 0, 4)),
    Rec(_H + 1, Ev("k", 0, 3)),
    Rec(_H + 1, Ev("j", 0, 5)),
]


@pytest.mark.parametrize("lose_disk", [False, True], ids=["cache-kept", "disk-lost"])
@pytest.mark.parametrize("point", CRASH_POINTS, ids=str)
async def test_a_replayed_flush_straddling_the_horizon_counts_what_it_counted(tmp_path: Path, point, lose_disk):
    """Recovery reads the flush's own sightings back (a copy counted at offset 4 replaces the one
    of offset 0), and the replay judged offset 2 against offset 4's sighting, a later position:
    new, so a crash between the events and the rollups left k and j counted twice in the rollups."""
    calm = cluster(_STRADDLING, tmp_path / "calm")
    assert await run(calm, (1, 5)) == 0
    cl = cluster(_STRADDLING, tmp_path / "crash")
    assert await run(cl, (1, 5), {1: point}, lose_disk=lose_disk) == 1
    tokens = {key: cell[0] for key, cell in cl.store.rollup_totals(by_ingest_minute=True).items() if key[0] == "tokens"}
    assert sum(tokens.values()) == 14
    assert cl.store.rollup_totals(by_ingest_minute=True) == calm.store.rollup_totals(by_ingest_minute=True)
    assert sorted(r.ingest_offset for r in cl.store.event_rows()) == [0, 1, 4, 5]
    assert {letter_id(letter) for letter in cl.dlq} == {(3, -1, "duplicate_conflict")}
    # The replay's marker counts two accepted; offset 3, whose first copy is gone from the cache,
    # as a duplicate rather than a conflict (its dead letter went before the events).
    accepted, duplicates, dead_lettered = [m[6:9] for m in cl.store.markers if m[3] == 2][-1]
    assert (accepted, duplicates + dead_lettered) == (2, 2)
