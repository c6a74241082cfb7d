"""The usage sink killed at every write of a flush, fed repeats and late usage: totals stay exact.

No broker and no ClickHouse: ``sink_fakes`` holds ClickHouse and the broker's log in memory,
and its :class:`Cluster` is what outlives a worker process: the partition and the group's
committed offset (Kafka), the DLQ, ClickHouse, and the real RocksDB dedupe cache's directory,
left as the killed process left it (or lost with the disk). A worker reads from the committed
offset, flushes at fixed boundaries and lets Kafka commit what it acked; an armed fault kills
it at one port call, and the next worker starts from the committed offset, as Kafka
redelivers. Every run is checked against :func:`expected`, a model of the usage contract
written here, independent of the sink.
"""

from __future__ import annotations

import asyncio
import json
import operator
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from bastionary.catalog import parse_catalog
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import Admission, DeadLetter, InboundRecord
from tests.unit.sink_fakes import Cluster, run

TOPIC = "usage.events"
SKEW, HORIZON = timedelta(minutes=5), timedelta(days=35)  # the defaults of settings.py
# Broker time a little before the wall clock: recovery re-reads dedupe keys "since now - horizon".
BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
BAD_JSON = b"{not json"
METERS = [  # one event type feeds a meter of every aggregation
    {"key": "tokens", "aggregation": "SUM", "value_property": "$.tokens", "group_by": {"model": "$.model"}},
    {"key": "calls", "aggregation": "COUNT"},
    {"key": "peak", "aggregation": "MAX", "value_property": "$.tokens"},
    {"key": "users", "aggregation": "UNIQUE_COUNT", "value_property": "$.user"},
    {"key": "last", "aggregation": "LATEST", "value_property": "$.tokens"},
]
CATALOG = parse_catalog({"meters": [m | {"event_type": "llm"} for m in METERS]})
COLUMN = {"tokens": 0, "calls": 1, "peak": 2, "users": 3, "last": 4}  # the merged column each meter reads


@dataclass(frozen=True)
class Ev:
    """A usage event as its producer sends it; its ``time`` is ``second`` seconds after BASE."""

    id: str
    second: int
    tokens: int | str = 1  # a string is no number: invalid_meter_value
    customer: str = "c1"
    model: str = "m1"
    user: str = "u1"

    @property
    def time(self) -> datetime:
        return BASE + timedelta(seconds=self.second)

    def body(self) -> dict[str, Any]:
        data = {"tokens": self.tokens, "model": self.model, "user": self.user}
        attributes = {"specversion": "1.0", "id": self.id, "source": "app", "type": "llm", "subject": self.customer}
        return attributes | {"time": self.time.isoformat(), "data": data}


@dataclass(frozen=True)
class Rec:
    """A record of usage.events: one event, a batch, or raw bytes; broker time ``at`` seconds after BASE."""

    at: int
    value: Ev | tuple[Ev, ...] | bytes


def inbound(offset: int, rec: Rec) -> InboundRecord:
    value = rec.value
    if isinstance(value, Ev):
        value = json.dumps(value.body()).encode()
    elif isinstance(value, tuple):
        value = json.dumps([e.body() for e in value]).encode()
    ts_ms = int((BASE + timedelta(seconds=rec.at)).timestamp() * 1000)
    return InboundRecord(TOPIC, 0, offset, ts_ms, b"c1", value, [])


# --- the model: what the contract says a log must end as ---------------------------------


def expected(recs: Sequence[Rec]) -> dict[str, Any]:
    """README "Exactly once" and schemas/README.md, for one partition, all within the horizon."""
    first: dict[str, Ev] = {}
    duplicates, letters = 0, set()
    for offset, rec in enumerate(recs):
        if isinstance(rec.value, bytes):
            letters.add((offset, -1, "invalid_json"))
            continue
        batch = isinstance(rec.value, tuple)
        for index, ev in enumerate(rec.value if batch else (rec.value,)):
            where = (offset, index if batch else -1)
            if ev.second > rec.at + SKEW.total_seconds():
                letters.add((*where, "future_time"))
            elif not isinstance(ev.tokens, int):
                letters.add((*where, "invalid_meter_value"))
            elif ev.id not in first:
                first[ev.id] = ev
            elif first[ev.id] == ev:
                duplicates += 1
            else:
                letters.add((*where, "duplicate_conflict"))  # the first one counts
    rollups: dict[tuple, tuple] = {}

    def add(key: tuple, value: Any, merge: Callable[[Any, Any], Any]) -> None:
        old, n = rollups.get(key, (None, 0))
        rollups[key] = (value if old is None else merge(old, value), n + 1)

    for e in first.values():
        window, tokens = e.time.replace(second=0), Decimal(e.tokens)
        add(("tokens", e.customer, (("model", e.model),), window), tokens, operator.add)
        add(("calls", e.customer, (), window), 1, operator.add)
        add(("peak", e.customer, (), window), tokens, max)
        add(("users", e.customer, (), window), frozenset([e.user]), operator.or_)
        add(("last", e.customer, (), window), (e.time, tokens), max)
    return {
        "events": {e.id: (e.customer, e.time, e.tokens, e.model, e.user) for e in first.values()},
        "rollups": rollups,
        "accepted, duplicates, dead-lettered": (len(first), duplicates, len(letters)),
        "dead letters": letters,
    }


def letter_id(letter: DeadLetter) -> tuple[int, int, str]:
    h = dict(letter.headers)
    return int(h["source.offset"]), int(h.get("source.index", b"-1")), h["error.class"].decode()


def outcome(cl: Cluster) -> dict[str, Any]:
    """What analysts read back: usage_events FINAL, merged rollups, ingest_progress FINAL, the DLQ."""
    events = {}
    for r in cl.store.events_final().values():
        data = json.loads(r.data)
        events[r.event_id] = (r.customer_id, r.time, data["tokens"], data["model"], data["user"])
    rollups = {
        (meter, customer, tuple(sorted(json.loads(gk).items())) if gk else (), window): (cell[COLUMN[meter]], cell[1])
        for (meter, customer, gk, window), cell in cl.store.rollup_totals().items()
    }
    markers = cl.store.markers_final()
    return {
        "events": events,
        "rollups": rollups,
        "accepted, duplicates, dead-lettered": tuple(sum(m[i] for m in markers) for i in (6, 7, 8)),
        "dead letters": {letter_id(letter) for letter in cl.dlq},
    }


def assert_exact(cl: Cluster, recs: Sequence[Rec]) -> None:
    assert outcome(cl) == expected(recs)
    rows = cl.store.event_rows()
    assert len(rows) == len(cl.store.events_final()), "a raw event landed twice: the tokens did not hold"


# --- where a worker can die -------------------------------------------------------------


class CrashPoint(NamedTuple):
    call: str  # the port call (or Kafka commit) the process dies at
    lands: bool  # the call took effect before the process died; False: it died before it

    def __str__(self) -> str:  # the test id: what had landed @ where it died
        landed = "the ack" if self == ("kafka_commit", False) else LANDED[self.level]
        return f"after-{landed.replace(' ', '-')}@{self.call}-{'landed' if self.lands else 'failed'}"

    @property
    def level(self) -> int:
        """How many steps of the flush had landed: 0 nothing ... 5 the dedupe cache, 6 Kafka's commit."""
        return CALLS.index(self.call) + self.lands


# The order of UsageSink._land, then the worker's ack and Kafka's commit of the acked offsets.
CALLS = ("insert_markers", "send_dead_letters", "insert_events", "insert_rollups", "dedupe.record", "kafka_commit")
LANDED = ("nothing", "the marker", "the dead letters", "events", "rollups", "the dedupe cache", "the commit")
CRASH_POINTS = [CrashPoint(call, lands) for call in CALLS for lands in (False, True)]


def cluster(recs: Sequence[Rec], root: Path) -> Cluster:
    records = [inbound(offset, rec) for offset, rec in enumerate(recs)]
    return Cluster(records, root, MeterIndex(CATALOG.meters), RecordLimits(1 << 20, 100, SKEW), HORIZON)


# --- 1. a crash at every write of a flush ------------------------------------------------

SCENARIO = [
    # flush 1, offsets 0-3
    Rec(10, Ev("a1", 0, 5, "c1", "m1", "u1")),
    Rec(12, Ev("a2", 5, 7, "c2", "m2", "u2")),
    Rec(15, BAD_JSON),
    Rec(70, Ev("a3", 65, 11, "c1", "m1", "u3")),
    # flush 2, offsets 4-9: the one that crashes
    Rec(190, Ev("b1", 185, 2, "c1", "m1", "u1")),
    Rec(190, Ev("a1", 0, 5, "c1", "m1", "u1")),  # a repeat of flush 1: duplicate
    Rec(195, Ev("a2", 5, 8, "c2", "m2", "u2")),  # another payload: duplicate_conflict
    Rec(200, (Ev("b2", 20, 4, "c2", "m2", "u4"), Ev("b3", 190, "lots"))),  # late into flush 1's minute; a bad value
    Rec(205, Ev("b4", 200, 9, "c1", "m2", "u2")),
    Rec(206, Ev("b1", 185, 2, "c1", "m1", "u1")),  # a repeat inside the same flush
    # flush 3, offsets 10-12
    Rec(370, Ev("b2", 20, 4, "c2", "m2", "u4")),  # a repeat of the crashed flush: its dedupe keys must be back
    Rec(371, Ev("a3", 65, 11, "c1", "m1", "u3")),
    Rec(375, Ev("c1", 360, 1, "c2", "m1", "u1")),
]
BOUNDS = (3, 9, 12)
CRASHED = range(4, 10)  # the offsets of flush 2


@pytest.mark.parametrize("lose_disk", [False, True], ids=["cache-kept", "disk-lost"])
@pytest.mark.parametrize("point", CRASH_POINTS, ids=str)
async def test_a_crash_at_any_write_of_a_flush_ends_as_a_crash_free_run(tmp_path, point, lose_disk):
    calm = cluster(SCENARIO, tmp_path / "calm")
    assert await run(calm, BOUNDS) == 0
    cl = cluster(SCENARIO, tmp_path / "crash")
    assert await run(cl, BOUNDS, {1: point}, lose_disk=lose_disk, bounds_after_crash=(6, 12)) == 1  # refetched
    assert_exact(cl, SCENARIO)
    assert outcome(cl) == outcome(calm)
    assert cl.store.rollup_totals(by_ingest_minute=True) == calm.store.rollup_totals(by_ingest_minute=True)

    # The crash table of README "Exactly once: how" and UsageSink._land, row by row.
    level = point.level
    replayed = 1 <= level <= 5  # a marker landed and Kafka had not committed past it
    writers = [m[9] for m in cl.store.markers if m[3] == CRASHED.start]
    assert writers == (["w2"] if level == 0 else ["w1", "w2"] if replayed else ["w1"])
    ranges = {(m[3], m[4]) for m in cl.store.markers}  # a replay lands as [a, b] exactly, however it was fetched
    assert ranges == ({(0, 3), (4, 6), (7, 12)} if level == 0 else {(0, 3), (4, 9), (10, 12)})
    repeats = Counter(letter_id(letter) for letter in cl.dlq)
    resent = 2 <= level <= 5  # "they are sent again on replay ... its headers identify repeats"
    assert {k: n for k, n in repeats.items() if n > 1} == ({k: 2 for k in repeats if k[0] in CRASHED} if resent else {})  # fmt: skip
    token = f"{TOPIC}/0@1/4-9"  # "the replay's identical tokens make ClickHouse drop the repeats"
    assert cl.store.dropped == [f"{token}/events"] * (3 <= level <= 5) + [f"{token}/rollups"] * (4 <= level <= 5)
    # "the next owner re-reads the missing keys from usage_events" (a lost disk misses them all)
    accepted = {r.ingest_offset for r in calm.store.event_rows()}
    reread = {s.ingest_offset for s in cl.store.sightings_read}
    missing = {o for o in accepted if o in CRASHED} if 3 <= level <= (6 if lose_disk else 4) else set()
    assert reread == missing | ({o for o in accepted if o < CRASHED.start} if lose_disk else set())


async def test_after_a_crash_past_the_ack_the_newest_flush_is_replayed_and_its_inserts_dropped(tmp_path):
    """README crash table, 'the ack': records before a are skipped by offset; [a, b] lands again as the
    same inserts, which ClickHouse drops by token."""
    cl = cluster(SCENARIO[:10], tmp_path)
    assert await run(cl, BOUNDS[:2], commits=(True, False)) == 0  # [4, 9] landed and acked, not committed
    sink, rocks = cl.start()
    try:
        assert [await sink.admit(r) for r in cl.records[4:]] == [Admission.BUFFERED] * 6
        assert await sink.flush()
    finally:
        rocks.close()
    assert cl.store.dropped == [f"{TOPIC}/0@1/4-9/events", f"{TOPIC}/0@1/4-9/rollups"]
    assert_exact(cl, SCENARIO[:10])


async def test_a_worker_that_lost_its_disk_judges_repeats_by_broker_time_not_the_wall_clock(tmp_path):
    old = -int((HORIZON + timedelta(days=5)).total_seconds())  # broker time 40 days behind the wall clock
    recs = [Rec(old, Ev("x", old, 3)), Rec(old + 3600, Ev("x", old, 3))]  # a repeat an hour later
    cl = cluster(recs, tmp_path)
    assert await run(cl, (0, 1), {1: CrashPoint("insert_markers", False)}, lose_disk=True) == 1
    assert_exact(cl, recs)


# --- 2. replays and repeats --------------------------------------------------------------


async def test_the_same_log_delivered_twice_counts_once(tmp_path):
    cl = cluster(SCENARIO, tmp_path)
    await run(cl, BOUNDS, commits=(False,))
    assert cl.committed == 0
    await run(cl, BOUNDS)  # a restart without a commit: Kafka delivers the whole log again
    assert_exact(cl, SCENARIO)
    assert cl.store.dropped == [f"{TOPIC}/0@1/10-12/events", f"{TOPIC}/0@1/10-12/rollups"]  # the newest flush only
    sink, rocks = cl.start()
    try:  # a third worker replays the newest flush only; delivered again, every record is skipped
        assert [await sink.admit(r) for r in cl.records] == [Admission.LANDED] * 10 + [Admission.BUFFERED] * 3
        assert await sink.flush() and [await sink.admit(r) for r in cl.records] == [Admission.LANDED] * 13
    finally:
        rocks.close()


@pytest.mark.parametrize(
    ("later", "counted"),
    [(timedelta(days=1), 1), (HORIZON, 1), (HORIZON + timedelta(seconds=1), 2)],
    ids=["a-day-later", "at-the-horizon", "past-the-horizon"],
)
async def test_a_repeat_in_a_later_flush_counts_once_within_the_dedupe_horizon(tmp_path, later, counted):
    repeat = int(later.total_seconds())
    recs = [Rec(0, Ev("r", 0, 3)), Rec(repeat, Ev("r", 0, 3))]  # broker times; the event's own time is the same
    cl = cluster(recs, tmp_path)
    await run(cl, (0, 1))
    assert outcome(cl)["accepted, duplicates, dead-lettered"] == (counted, 2 - counted, 0)
    assert cl.store.total() == 3 * counted and not cl.dlq


async def test_a_repeat_with_another_payload_is_dead_lettered_and_the_first_counts(tmp_path):
    recs = [Rec(0, Ev("r", 0, 3)), Rec(60, Ev("r", 0, 4)), Rec(61, Ev("r", 0, 3, user="u9"))]
    cl = cluster(recs, tmp_path)
    await run(cl, (0, 2))
    assert_exact(cl, recs)
    assert [letter_id(letter) for letter in cl.dlq] == [(1, -1, "duplicate_conflict"), (2, -1, "duplicate_conflict")]
    assert b"first seen at offset 0" in dict(cl.dlq[0].headers)["error.message"]
    assert cl.dlq[0].value == inbound(1, recs[1]).value  # the later copy, as it was sent
    assert cl.store.total() == 3


# --- 3. late usage -----------------------------------------------------------------------


async def test_late_events_land_in_their_own_minute_after_it_was_flushed(tmp_path):
    month = 30 * 86400
    recs = [
        Rec(10, Ev("a", 0, 5)),
        Rec(70, Ev("b", 65, 7)),
        Rec(610, Ev("late-0", 30, 11)),  # ten minutes later, into minutes 0 and 1, flushed and closed
        Rec(612, Ev("late-1", 119, 13)),
        Rec(620, Ev("old", -month, 2)),  # a month old: the contract sets no maximum age
    ]
    cl = cluster(recs, tmp_path)
    await run(cl, (0, 1, 4))
    assert_exact(cl, recs)
    m0, m1, m10, month_ago = (BASE + timedelta(seconds=s) for s in (0, 60, 600, -month))
    windows = {(w, ingested) for (_, _, _, w, ingested) in cl.store.rollup_totals(by_ingest_minute=True)}
    # (event-time window, ingest minute): late usage adds partial rows to closed windows, none to minute 10
    assert windows == {(m0, m0), (m1, m1), (m0, m10), (m1, m10), (month_ago, m10)}
    from_raw = Counter()  # totals re-derive from the raw events
    for row in cl.store.events_final().values():
        from_raw[row.time.replace(second=0, microsecond=0)] += json.loads(row.data)["tokens"]
    sums = {w: s for (meter, _, _, w), (s, *_) in cl.store.rollup_totals().items() if meter == "tokens"}
    assert sums == from_raw == {m0: 16, m1: 20, month_ago: 2}


EPOCH_SECOND = int((datetime(1970, 1, 1, tzinfo=UTC) - BASE).total_seconds())


@pytest.mark.parametrize(
    ("second", "error_class"),
    [
        (EPOCH_SECOND, None),  # 1970-01-01T00:00:00Z: the oldest time the contract accepts
        (EPOCH_SECOND - 1, "invalid_time"),  # "time ... 1970..2105"
        (int(SKEW.total_seconds()), None),  # exactly BASTIONARY_MAX_FUTURE_SKEW past the broker timestamp
        (int(SKEW.total_seconds()) + 1, "future_time"),
    ],
    ids=["1970-accepted", "before-1970", "at-the-skew-accepted", "past-the-skew"],
)
async def test_event_times_outside_the_contract_are_dead_lettered_with_their_class(tmp_path, second, error_class):
    cl = cluster([Rec(0, Ev("t", second, 4))], tmp_path)
    await run(cl, (0,))
    assert [letter_id(letter)[2] for letter in cl.dlq] == ([error_class] if error_class else [])
    assert cl.store.total() == (0 if error_class else 4)


# --- 4. any mix of repeats, late events and crashes -------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Rec], dict[str, Any]]:
    pick = st.sampled_from
    # Event times from an hour before the first record to past the skew; broker times only grow.
    shape = st.builds(Ev, st.just(""), st.integers(-3600, 600), st.integers(0, 50), pick(["c1", "c2"]), pick(["m1", "m2"]), pick(["u1", "u2", "u3"]))  # fmt: skip
    events = [replace(e, id=f"e{i}") for i, e in enumerate(draw(st.lists(shape, min_size=1, max_size=6)))]
    member = st.one_of(
        pick(events),  # the event, or a repeat of it
        st.builds(lambda e, d: replace(e, tokens=e.tokens + d), pick(events), st.integers(1, 3)),  # a conflict
        st.builds(lambda e: replace(e, tokens="lots"), pick(events)),  # an invalid value
    )
    value = st.one_of(member, st.lists(member, min_size=1, max_size=3).map(tuple), st.just(BAD_JSON))
    gaps = draw(st.lists(st.tuples(st.integers(0, 240), value), min_size=1, max_size=14))
    recs = [Rec(sum(g for g, _ in gaps[: i + 1]), v) for i, (_, v) in enumerate(gaps)]
    bounds = st.sets(st.integers(0, len(recs) - 1)).map(lambda b: sorted(b | {len(recs) - 1}))
    first = draw(bounds)
    return recs, {
        "bounds": first,
        # delivery number -> where that worker dies (if the flush gets there: no dead letters, no send)
        "crashes": draw(st.dictionaries(st.integers(0, len(first)), pick(CRASH_POINTS), min_size=1, max_size=3)),
        "commits": draw(st.lists(st.booleans(), min_size=1, max_size=4)),  # False: Kafka has not committed
        "lose_disk": draw(st.booleans()),
        "bounds_after_crash": draw(bounds),  # a new process fetches differently
    }


@settings(max_examples=150, deadline=None)
@given(histories())
def test_any_history_of_repeats_late_events_and_crashes_ends_with_the_crash_free_totals(history):
    recs, options = history

    async def scenario():
        with tempfile.TemporaryDirectory() as root:
            cl = cluster(recs, Path(root))
            event(f"workers died: {await run(cl, **options)}")
            assert_exact(cl, recs)

    asyncio.run(scenario())
