"""``POST /v1/events`` answers as the topic reader judges: what it accepts lands, once.

Each posted body goes through :func:`judge_posted` and then its records through the worker's
own :class:`FlushPlanner`, as the broker would hand them over.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bastionary.catalog import parse_catalog
from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.planning import FlushPlan, FlushPlanner
from bastionary.metering.posted import PostedEvents, judge_posted
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord
from bastionary.worker.api.failures import failures_as_json
from tests.unit.served_apps import events_view, served

NOW_MS = 1_772_323_200_000  # 2026-03-01T00:00:00Z
TOPIC = "usage.events"
METERS = MeterIndex(
    parse_catalog(
        {"meters": [{"key": "tokens", "event_type": "llm", "aggregation": "SUM", "value_property": "$.tokens"}]}
    ).meters
)
LIMITS = RecordLimits(1 << 20, 10_000, timedelta(minutes=5))
PRODUCER_MAX_REQUEST_SIZE = 1_000_000  # Faust's default, which the worker keeps


def usage(event_id: str, tokens: Any = 1, **extra: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "svc",
        "type": "llm",
        "subject": "cust-1",
        "time": "2026-02-28T12:00:00Z",
        "data": {"tokens": tokens},
    }
    return event | extra


def posted_and_landed(tmp_path: Path, body: bytes) -> tuple[PostedEvents, FlushPlan]:
    posted = judge_posted(body, True, NOW_MS, LIMITS, METERS)
    records = [
        InboundRecord(TOPIC, 0, offset, NOW_MS + 5, key, value, [])
        for offset, (key, value) in enumerate(posted.records)
    ]
    planner = FlushPlanner(METERS, RocksDedupeStore(tmp_path / "dedupe", 35 * 86400), LIMITS)
    return posted, planner.plan(TOPIC, 0, 1, records)


def test_a_member_conflicting_with_an_earlier_one_of_the_request_is_rejected_not_dead_lettered(tmp_path):
    """Was answered 202 with both in ``ids``; the worker then dead-lettered the second as
    duplicate_conflict. A true repeat is still accepted, and counts once."""
    body = json.dumps([usage("e1", 5), usage("e1", 7), usage("e1", 5), usage("e2")]).encode()
    posted, plan = posted_and_landed(tmp_path, body)
    assert [(member.index, member.id, member.code) for member in posted.rejected] == [(1, "e1", "duplicate_conflict")]
    assert posted.accepted == ["e1", "e1", "e2"]
    assert plan.dead_letters == []
    assert [row[0] for row in plan.event_rows] == ["e1", "e2"]
    assert plan.stats.duplicates == 1


def test_a_member_nested_past_the_exact_decoders_depth_costs_only_itself(tmp_path):
    """orjson judges 1,024 levels, msgspec's exact decode about 1,000: the whole body's decode
    raised RecursionError, and the request was answered 503, retried for ever."""
    nested = "[" * 1_000 + "]" * 1_000
    deep = json.dumps(usage("deep"))[:-1] + f', "x": {nested}}}'
    body = f'[{json.dumps(usage("e1", 1.5))}, {deep}, {{"note": "[{{,\\"]}}", "tokens": 2.25}}, {json.dumps(usage("e3", "12.5"))}]'
    posted, plan = posted_and_landed(tmp_path, body.encode())
    assert posted.accepted == ["e1", "e3"]
    assert [(member.index, member.code) for member in posted.rejected] == [
        (1, "nesting_too_deep"),
        (2, "not_cloudevent"),
    ]
    assert plan.dead_letters == []
    assert [(row[0], row[5]) for row in plan.event_rows] == [("e1", '{"tokens":1.5}'), ("e3", '{"tokens":"12.5"}')]


def test_a_request_within_the_record_limit_makes_records_the_producer_takes(tmp_path):
    """A customer's batch of just under 1 MiB (BASTIONARY_MAX_RECORD_BYTES) became one record
    past the producer's 1,000,000 bytes: a 413 for a request the contract allows."""
    members = [json.dumps(usage(f"e{n}", n, note="x" * 900)) for n in range(1_100)]
    while len(members) + 1 + sum(len(member) for member in members) > LIMITS.max_record_bytes:
        members.pop()
    body = ("[" + ",".join(members) + "]").encode()
    assert len(body) > PRODUCER_MAX_REQUEST_SIZE
    posted, plan = posted_and_landed(tmp_path, body)
    assert len(posted.records) > 1
    for key, value in posted.records:
        assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) <= PRODUCER_MAX_REQUEST_SIZE
    assert [row[0] for row in plan.event_rows] == [f"e{n}" for n in range(len(members))]
    assert plan.dead_letters == []


async def test_a_body_that_does_not_decompress_is_a_400_not_a_500():
    """Was a 500 internal_error, logged as a bug of ours, which clients retry as it is."""

    class NoBroker:
        async def post_usage(self, body, batch, customer):
            raise AssertionError("an unreadable body is not published")

    view = events_view(NoBroker())
    app = web.Application(middlewares=[failures_as_json])
    app.router.add_post("/v1/events", lambda request: view.post(None, request))
    headers = {"Content-Type": "application/cloudevents+json", "Content-Encoding": "zstd"}
    async with (
        served(app) as base,
        aiohttp.ClientSession() as session,
        session.post(f"{base}/v1/events", data=b"not zstd", headers=headers) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_encoding"


def test_a_number_past_decimals_exponent_beside_a_deep_member_costs_only_its_own_member(tmp_path):
    """The member-by-member decode a body nested past msgspec's reach falls back to read numbers
    with plain Decimal: 0e-9999999999999999999 (JSON; orjson reads 0.0) raised InvalidOperation
    out of judge_posted, a 500 for the whole request (forty-fifth session's review)."""
    nested = "[" * 1_000 + "]" * 1_000
    deep = json.dumps(usage("deep"))[:-1] + f', "x": {nested}}}'
    huge = json.dumps(usage("e2", 7)).replace('"tokens": 7', '"tokens": 0e-9999999999999999999')
    body = f"[{json.dumps(usage('e1', 1.5))}, {deep}, {huge}, {json.dumps(usage('e3', '12.5'))}]"
    posted, plan = posted_and_landed(tmp_path, body.encode())
    assert posted.accepted == ["e1", "e3"]
    assert [(member.index, member.code) for member in posted.rejected] == [
        (1, "nesting_too_deep"),
        (2, "value_out_of_range"),
    ]
    assert [row[0] for row in plan.event_rows] == ["e1", "e3"]
