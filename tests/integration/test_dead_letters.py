"""Every kind of bad input reaches usage.dlq with its reason, and never stalls the partition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bastionary.tools.workload import Record

from .helpers import dead_letters, publish

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def _event(event_id: str, **overrides) -> dict:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "dlq-test",
        "type": "llm.completion",
        "subject": "cust-dlq",
        "time": NOW.isoformat(),
        "data": {"tokens": 10, "model": "gpt-4"},
    }
    return event | overrides


def _record(payload) -> Record:
    return Record(b"cust-dlq", payload if isinstance(payload, bytes) else orjson.dumps(payload))


CASES = {
    "invalid_json": _record(b"{nope"),
    "invalid_encoding": _record(b'{"id": "\xc3\x28"}'),
    "not_cloudevent": _record({k: v for k, v in _event("no-subject").items() if k != "subject"}),
    "invalid_time": _record(_event("bad-time", time="2026-13-45T99:00:00Z")),
    "future_time": _record(_event("future", time=(NOW + timedelta(hours=1)).isoformat())),
    "invalid_meter_value": _record(_event("no-value", data={"model": "gpt-4"})),
    "record_too_large": _record(_event("huge", data={"tokens": 1, "model": "x" * 5000})),
    "empty_batch": _record(b"[]"),
}


def test_each_bad_record_is_dead_lettered_with_its_reason_and_good_ones_still_count(stack):
    stack.start_worker(BASTIONARY_MAX_RECORD_BYTES="4096")
    non_numeric = _record(_event("text-value", data={"tokens": "many", "model": "gpt-4"}))
    mixed_batch = _record([_event("batch-good-1"), {"specversion": "1.0"}, _event("batch-good-2")])
    first = _record(_event("conflict", data={"tokens": 5, "model": "gpt-4"}))
    conflicting = _record(_event("conflict", data={"tokens": 500, "model": "gpt-4"}))
    repeat = _record(_event("batch-good-1"))
    good_after = _record(_event("after-all-the-bad-ones"))
    records = [*CASES.values(), non_numeric, mixed_batch, first, conflicting, repeat, good_after]
    ends = publish(stack, records)
    stack.wait_caught_up(ends)

    letters = dead_letters(stack, expect=len(CASES) + 3)
    by_class: dict[str, list] = {}
    for message in letters:
        headers = {k: v.decode() for k, v in message.headers}
        by_class.setdefault(headers["error.class"], []).append((headers, message.value))
        assert headers["error.message"]
        assert headers["source.topic"] == stack.usage_topic
        assert int(headers["source.partition"]) in ends and int(headers["source.offset"]) >= 0
    assert set(by_class) == set(CASES) | {"duplicate_conflict"}
    assert len(by_class["invalid_meter_value"]) == 2  # missing, and "many"
    assert len(by_class["not_cloudevent"]) == 2  # the lone record, and the batch's bad member
    batch_member = [h for h, _ in by_class["not_cloudevent"] if "source.index" in h]
    assert batch_member and batch_member[0]["source.index"] == "1"
    assert by_class["invalid_json"][0][1] == b"{nope"  # the original bytes
    assert by_class["invalid_encoding"][0][1] == b'{"id": "\xc3\x28"}'

    counted = {row[0] for row in stack.query("SELECT event_id FROM usage_events FINAL")}
    assert counted == {"batch-good-1", "batch-good-2", "conflict", "after-all-the-bad-ones"}
    tokens = stack.query("SELECT value_sum FROM usage_rollup_1m FINAL WHERE meter = 'llm_tokens'")
    assert sum(v for (v,) in tokens) == 10 + 10 + 5 + 10  # the first 'conflict' payload wins
