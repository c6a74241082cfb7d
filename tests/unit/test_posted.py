"""Usage posted over HTTP is judged by the pipeline's own code, and what is published is,
to the pipeline, the very events that were posted: same payload digests, same stored data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.catalog import parse_catalog
from bastionary.ingest.cloudevents import RecordLimits, parse_record
from bastionary.metering.posted import judge_posted
from bastionary.metering.readings import MeterIndex

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = RecordLimits(1_048_576, 1000, timedelta(minutes=5))
METERS = MeterIndex(
    parse_catalog(
        {"meters": [{"key": "tokens", "event_type": "llm", "aggregation": "SUM", "value_property": "$.tokens"}]}
    ).meters
)


def event(event_id: str, customer: str = "c1", tokens=5, **extra) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "s",
        "type": "llm",
        "subject": customer,
        "time": NOW.isoformat(),
        "data": {"tokens": tokens},
    } | extra


def judged(body, batch=None, customer=None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return judge_posted(raw, batch, NOW_MS, LIMITS, METERS, customer)


def published_members(posted):
    """What the pipeline will read back from the published records."""
    out = []
    for key, value in posted.records:
        parsed = parse_record(value, None, NOW_MS, LIMITS, key)
        assert parsed.rejection is None
        for member in parsed.members:
            assert member.event is not None and member.event.subject == key.decode()
            out.append((member.event.id, member.payload_hash, parsed.stored_data(member)))
    return out


def expected_members(body, posted):
    """The accepted members as the pipeline would read them from the posted body itself,
    grouped by customer in order of first appearance (one record per customer)."""
    parsed = parse_record(body, None, NOW_MS, LIMITS)
    rejected = {r.index for r in posted.rejected}
    by_customer: dict[str, list] = {}
    for m in parsed.members:
        if m.index not in rejected:
            by_customer.setdefault(m.event.subject, []).append((m.event.id, m.payload_hash, parsed.stored_data(m)))
    return [member for members in by_customer.values() for member in members]


def test_one_event_is_one_record_keyed_by_its_customer():
    posted = judged(event("e1"), batch=False)
    assert posted.accepted == ["e1"] and not posted.rejected and posted.refused is None
    assert [key for key, _ in posted.records] == [b"c1"]


def test_a_batch_is_cut_into_one_record_per_customer_in_order():
    posted = judged([event("a", "c1"), event("b", "c2"), event("c", "c1")], batch=True)
    assert posted.accepted == ["a", "b", "c"]
    assert [(k, [e["id"] for e in orjson.loads(v)]) for k, v in posted.records] == [
        (b"c1", ["a", "c"]),
        (b"c2", ["b"]),
    ]


def test_bad_members_are_named_and_the_rest_go():
    body = [event("ok"), event("words", tokens="many"), event("late", time=(NOW + timedelta(hours=1)).isoformat()), 7]
    posted = judged(body, batch=True)
    assert posted.accepted == ["ok"]
    assert [(r.index, r.id, r.code) for r in posted.rejected] == [
        (1, "words", "invalid_meter_value"),
        (2, "late", "future_time"),
        (3, None, "not_cloudevent"),
    ]


def test_a_customer_limited_key_posts_for_its_customer_only():
    posted = judged([event("mine", "c1"), event("theirs", "c2")], customer="c1")
    assert posted.accepted == ["mine"] and [(r.id, r.code) for r in posted.rejected] == [("theirs", "other_customer")]


def test_the_content_type_must_match_the_shape():
    assert judged(event("e"), batch=True).refused.code.value == "not_cloudevent"
    assert judged([event("e")], batch=False).refused.code.value == "not_cloudevent"
    assert judged(b"[]").refused.code.value == "empty_batch"
    assert judged(b"{").refused.code.value == "invalid_json"


def test_exact_numbers_survive_the_cut():
    body = b'[{"specversion":"1.0","id":"x","source":"s","type":"llm","subject":"c1","time":"2026-11-30T12:00:00Z",'
    body += b'"data":{"tokens":0.123456789,"price":0.10000000000000000001,"e":1.5e3}}]'
    posted = judged(body)
    assert published_members(posted) == expected_members(body, posted)
    assert b"0.10000000000000000001" in posted.records[0][1] and b"1.5e3" in posted.records[0][1]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
members = st.one_of(
    st.builds(
        lambda i, c, t, d: event(f"e{i}", c, t) | {"data": {"tokens": t, **d}},
        st.integers(0, 30),
        st.sampled_from(["c1", "c2", "c3"]),
        st.one_of(st.integers(0, 10**6), st.decimals(0, 10**6, places=4).map(float), st.text(max_size=3)),
        st.dictionaries(st.sampled_from(["x", "y", "é", "\u2028"]), json_values, max_size=2),
    ),
    json_values,
)


@settings(max_examples=300)
@given(st.lists(members, max_size=12))
def test_every_member_is_accepted_or_rejected_once_and_published_as_itself(body):
    raw = orjson.dumps(body)
    posted = judged(raw)
    if not body:
        assert posted.refused is not None
        return
    assert posted.refused is None
    assert len(posted.accepted) + len(posted.rejected) == len(body)
    assert sorted(r.index for r in posted.rejected) == [r.index for r in posted.rejected]
    assert published_members(posted) == expected_members(raw, posted)


@given(st.binary(max_size=300))
def test_any_bytes_are_judged_never_raised(raw):
    posted = judged(raw)
    assert posted.refused is not None or len(posted.accepted) + len(posted.rejected) >= 1


@settings(max_examples=200)
@given(st.text(max_size=40), st.integers(-3, 3), st.booleans())
def test_an_event_accepted_near_the_size_limit_is_never_published_too_large(pad, slack, as_batch):
    """The limit set a few bytes around the body's own size: what POST accepts, the pipeline
    takes. Until 2026-12-07 a lone event within the limit was published as a one-member batch,
    two bytes longer, and dead-lettered as ``record_too_large`` after its 202."""
    document = event("near") | {"data": {"tokens": 5, "pad": pad}}
    raw = orjson.dumps([document] if as_batch else document)
    limits = RecordLimits(len(raw) + slack, 1000, timedelta(minutes=5))
    posted = judge_posted(raw, as_batch, NOW_MS, limits, METERS)
    if slack < 0:
        assert posted.refused is not None and posted.refused.code.value == "record_too_large"
        return
    assert posted.accepted == ["near"]
    for key, value in posted.records:
        parsed = parse_record(value, None, NOW_MS, limits, key)
        assert parsed.rejection is None and [m.event.id for m in parsed.members if m.event] == ["near"]
