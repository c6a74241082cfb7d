"""``ClickHouseUsageStore.sightings_after`` on real (embedded) ClickHouse: the dedupe keys a
worker re-reads after losing its disk are chosen by the partition's broker time, so usage
stamped weeks behind the wall clock keeps its repeats caught."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime, timedelta
    from bastionary.metering.ports import EventRow
    from bastionary.storage.client import open_client
    from bastionary.storage.usage import ClickHouseUsageStore

    store = ClickHouseUsageStore(open_client("chdb://" + sys.argv[1], "t", create=True))
    store.migrate()
    newest = datetime(2020, 3, 1, tzinfo=UTC)  # years behind the wall clock
    def row(event_id, age, partition=0, offset=0):
        at = newest - age
        return EventRow(event_id, "//s", "t", "c", at, "{}", "00" * 16, at, "usage", 1, partition, offset, 0)
    store.insert_events([
        row("newest", timedelta(0), offset=5),
        row("inside", timedelta(days=35), offset=4),
        row("outside", timedelta(days=35, seconds=1), offset=3),
        row("before-after", timedelta(days=1), offset=1),
        row("other-partition", timedelta(days=400), partition=1),
    ], "t1")
    found = store.sightings_after("usage", 0, (1, 1), timedelta(days=35))
    print(json.dumps(sorted(r.event_id for r in found)))
    """
)


def test_keys_are_chosen_by_the_partitions_newest_broker_time_not_the_wall_clock(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "ch")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["inside", "newest"]
