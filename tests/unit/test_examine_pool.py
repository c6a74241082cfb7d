"""Records examined in a child process plan exactly as records examined in the worker.

The pool is real: spawned processes, pickled chunks. Each test compares a flush planned with
the pool against the same flush planned in this process, field by field.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.catalog import load_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.ingest.errors import ErrorClass, Rejection
from bastionary.metering.examine_pool import ExaminePool
from bastionary.metering.planning import FlushPlan, FlushPlanner
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord
from bastionary.tools.workload import BAD_KINDS, generate
from tests.unit.schema_helpers import json_values

CATALOG = load_catalog(None)
LIMITS = RecordLimits(1_000_000, 1_000, timedelta(minutes=5))
HORIZON = 2 * 86_400
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.fixture(scope="module")
def pool():
    examine_pool = ExaminePool(CATALOG.meters, LIMITS)
    yield examine_pool
    examine_pool.close()


def plan_with(path: Path, records: list[InboundRecord], examiner=None, limits=LIMITS) -> FlushPlan:
    dedupe = RocksDedupeStore(path, HORIZON)
    try:
        return FlushPlanner(MeterIndex(CATALOG.meters), dedupe, limits, examiner).plan("usage", 0, 7, records)
    finally:
        dedupe.close()


def assert_same(pooled: FlushPlan, here: FlushPlan) -> None:
    assert pooled.event_rows == here.event_rows
    assert pooled.rollup_rows == here.rollup_rows
    assert pooled.sightings == here.sightings
    assert pooled.dead_letters == here.dead_letters
    assert pooled.stats == here.stats


def inbound(values: list[tuple[bytes | None, bytes | None, list]]) -> list[InboundRecord]:
    return [InboundRecord("usage", 0, offset, NOW_MS, key, value, headers) for offset, (key, value, headers) in enumerate(values)]  # fmt: skip


def event(event_id: str, **data: object) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "tests",
        "type": "llm.completion",
        "subject": "cust-1",
        "time": "2026-12-01T11:59:00+02:00",
        "data": {"tokens": 5, "model": "m"} | data,
    }


def test_the_pool_plans_a_flush_exactly_as_the_worker_does(pool, tmp_path):
    workload = generate(3_000, late_events=50, bad_records=len(BAD_KINDS), now=NOW, seed=11)
    extra = [
        # a batch with a member no meter can read, a repeat and a conflicting repeat of an earlier id
        orjson.dumps([event("b-1"), event("b-2", tokens="many"), event("b-1"), event("b-1", tokens=6)]),
        orjson.dumps(event("exact", tokens=12345678901234567.5)),  # only the exact decode keeps it
    ]
    records = inbound([(r.key, r.value, list(r.headers)) for r in workload.records] + [(b"c", v, []) for v in extra])
    pooled = plan_with(tmp_path / "pooled", records, pool)
    here = plan_with(tmp_path / "here", records)
    assert_same(pooled, here)
    codes = {letter.code for letter in here.dead_letters}
    assert {ErrorClass.DUPLICATE_CONFLICT, ErrorClass.INVALID_METER_VALUE} <= codes
    assert here.stats.duplicates > 0 and here.stats.accepted > 2_000


_events = st.fixed_dictionaries(
    {
        "specversion": st.sampled_from(["1.0", "0.3"]),
        "id": st.text(min_size=0, max_size=6),
        "source": st.just("s"),
        "type": st.sampled_from(["llm.completion", "api.request", "storage.sampled", "user.active", "x"]),
        "subject": st.text(min_size=1, max_size=4),
        "time": st.sampled_from(
            ["2026-12-01T11:00:00Z", "2026-12-01T11:00:00.5+01:00", "yesterday", "2999-01-01T00:00:00Z"]
        ),
    },
    optional={
        "data": st.dictionaries(
            st.sampled_from(["tokens", "gb", "user_id", "seats", "model", "method"]), json_values, max_size=4
        )
    },
)
_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    _events.map(orjson.dumps),
    st.lists(_events, min_size=0, max_size=5).map(orjson.dumps),
    json_values.map(orjson.dumps),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_values, min_size=1, max_size=8))
def test_whatever_records_hold_the_pool_judges_them_as_the_worker_does(pool, tmp_path_factory, values):
    records = inbound([(b"k", value, []) for value in values])
    path = tmp_path_factory.mktemp("hostile")
    assert_same(plan_with(path / "pooled", records, pool), plan_with(path / "here", records))


def test_a_child_that_dies_costs_time_not_records(tmp_path):
    workload = generate(600, now=NOW, seed=3)
    records = inbound([(r.key, r.value, list(r.headers)) for r in workload.records])
    here = plan_with(tmp_path / "here", records)
    examine_pool = ExaminePool(CATALOG.meters, LIMITS)
    try:
        assert_same(plan_with(tmp_path / "first", records, examine_pool), here)
        children = list(examine_pool._pool()._processes.values())
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        for child in children:
            child.join(10)
        time.sleep(0.2)  # the pool's manager notices the death and breaks the pool
        with structlog.testing.capture_logs() as logs:
            assert_same(plan_with(tmp_path / "broken", records, examine_pool), here)
        assert any(entry["log_level"] == "error" and "examine pool" in entry["event"] for entry in logs)
        assert_same(plan_with(tmp_path / "again", records, examine_pool), here)  # a new pool
        assert all(child.is_alive() for child in examine_pool._pool()._processes.values())
    finally:
        examine_pool.close()


class LimitsWithABug:
    """Record limits whose batch limit raises: a bug of ours that every batch record meets.

    Defined at module level so that a spawned child unpickles it by importing this module,
    and the bug runs inside the child's examine, as a real one would.
    """

    max_record_bytes = LIMITS.max_record_bytes
    max_future_skew = LIMITS.max_future_skew

    @property
    def max_batch_events(self) -> int:
        raise ArithmeticError("a bug injected by the test")


def test_a_bug_met_in_a_child_costs_that_record_not_the_flush(tmp_path):
    workload = generate(400, now=NOW, seed=5, single_only=True)
    singles = [(r.key, r.value, list(r.headers)) for r in workload.records]
    batch = (b"c", orjson.dumps([event("in-batch-1"), event("in-batch-2")]), [])
    records = inbound([*singles[:200], batch, *singles[200:]])
    buggy = LimitsWithABug()
    here = plan_with(tmp_path / "here", records, limits=buggy)
    examine_pool = ExaminePool(CATALOG.meters, buggy)  # type: ignore[arg-type]
    try:
        pooled = plan_with(tmp_path / "pooled", records, examine_pool, limits=buggy)
        assert examine_pool._executor is not None  # the child examined the flush: no fallback ran
    finally:
        examine_pool.close()
    assert_same(pooled, here)
    [letter] = pooled.dead_letters
    headers = dict(letter.headers)
    assert (letter.code, letter.value) == (ErrorClass.INTERNAL_ERROR, batch[1])
    assert headers["error.exception"] == b"ArithmeticError"
    assert b"a bug injected by the test" in headers["error.message"]
    assert headers["source.offset"] == b"200"
    assert pooled.stats.accepted == len(workload.records) - pooled.stats.duplicates


def test_a_rejection_crosses_processes_whole():
    sent = pickle.dumps(Rejection(ErrorClass.NEGATIVE_VALUE, "meter x: -1 is negative"))
    rejection = pickle.loads(sent)  # noqa: S301 -- our own bytes, as the pool sends them
    assert (rejection.code, rejection.message, str(rejection)) == (
        ErrorClass.NEGATIVE_VALUE,
        "meter x: -1 is negative",
        "meter x: -1 is negative",
    )
