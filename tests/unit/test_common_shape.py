"""The one-call decode of the common shape judges a record exactly as the general path does.

:func:`parse_record` first tries :func:`bastionary.ingest.common_shape.decode_common`; a replay
must judge a record the same whichever path took it, so every field of every member (the
dict, the event, the payload hash, the stored data) must be what the general path gives.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from unittest import mock

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastionary.ingest import cloudevents
from bastionary.ingest.cloudevents import ParsedRecord, RecordLimits, RecordMember, parse_record
from bastionary.ingest.errors import Rejection
from bastionary.metering.meters import Meter
from bastionary.metering.readings import MeterIndex
from tests.unit.test_cloudevents import RECORD_TS_MS, event

LIMITS = RecordLimits(1_048_576, 8, timedelta(minutes=5))
# test_cloudevents' event, with a time of six fractional digits: the producers' usual spelling.
_event = partial(event, time="2024-05-01T11:59:00.123456Z")


def _both(value: bytes) -> tuple[ParsedRecord, ParsedRecord]:
    either = parse_record(value, None, RECORD_TS_MS, LIMITS)
    with mock.patch.object(cloudevents, "_in_common_shape", return_value=None):
        general = parse_record(value, None, RECORD_TS_MS, LIMITS)
    return either, general


# Meters on the members' type that read what the generated data holds: a key "" (often drawn)
# as a value and as a dimension, "a" as a unique value.
_METERS = MeterIndex(
    [
        Meter(
            key="summed", event_type="llm.completion", aggregation="SUM", value_property="$['']", allow_negative=True
        ),
        Meter(key="counted", event_type="llm.completion", aggregation="COUNT", group_by={"dim": "$['']"}),
        Meter(key="uniques", event_type="llm.completion", aggregation="UNIQUE_COUNT", value_property="$.a"),
    ]
)


def _as_general(value: object) -> object:
    """What the general path's decode holds: the common shape decodes a number with a fraction
    as a Decimal of its digits, the general path as a float (and reads it exactly on demand)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _as_general(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_general(item) for item in value]
    return value


def _judged(parsed: ParsedRecord) -> tuple:
    def rejection(r: object) -> tuple | None:
        return None if r is None else (r.code, r.message)  # type: ignore[attr-defined]

    def readings(member: RecordMember) -> object:
        if member.event is None:
            return None
        try:
            return _METERS.readings(member.event, parsed.exact_data, member.index)
        except Rejection as refused:
            return rejection(refused)

    # Readings first: a value read exactly is stored with its digits, so they decide stored_data.
    members = [
        (
            m.index,
            _as_general(m.raw),
            None if m.event is None else replace(m.event, data=_as_general(m.event.data)),
            None if m.event is None else m.event.time.utcoffset(),
            m.payload_hash,
            rejection(m.rejection),
            readings(m),
            None if m.event is None else parsed.stored_data(m),
        )
        for m in parsed.members
    ]
    return rejection(parsed.rejection), parsed.batch, members


def test_the_common_shape_is_decoded_in_one_call():
    batch = orjson.dumps([_event(), _event(id="evt-2", data={}), _event(id="evt-3", datacontenttype=None)])
    latest = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    assert cloudevents._in_common_shape(batch, latest, LIMITS) is not None
    assert cloudevents._in_common_shape(orjson.dumps(_event()), latest, LIMITS) is not None
    longest = _event(id="i" * 512, source="s" * 1024, type="t" * 256, subject="c" * 256)
    assert cloudevents._in_common_shape(orjson.dumps(longest), latest, LIMITS) is not None
    either, general = _both(batch)
    assert _judged(either) == _judged(general)


def test_anything_else_is_left_to_the_general_path():
    latest = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    others = [
        [_event(), _event(region="eu")],  # an extension attribute
        [_event(), {k: v for k, v in _event().items() if k != "subject"}],
        [_event(time="2024-05-01T12:06:00Z")],  # after the allowed skew: rejected, so the general path words it
        [_event(data={"n": 2**64})],  # orjson decodes it as a float, msgspec as an int
        [_event(id="")],
        [_event(id="i" * 513)],  # each attribute one past the longest the contract takes
        [_event(source="s" * 1025)],
        [_event(type="t" * 257)],
        [_event(subject="c" * 257)],
        [_event(specversion="1.1")],
        [_event()] * 9,  # more members than the limit
        [],
    ]
    for members in others:
        assert cloudevents._in_common_shape(json.dumps(members).encode(), latest, LIMITS) is None, members


def test_a_number_with_a_fraction_is_read_exactly_in_the_one_call():
    """The common shape decodes such a number as its digits, so a meter reads it exactly and
    the stored data keeps its spelling without a second decode of the member; the digest,
    readings and stored data are the general path's, whose exact decode runs on demand."""
    latest = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    spellings = [b"1.50", b"0.123456789", b"1E5", b"-0.0", b"2.5e-3", b"0.10000000000000001", b"1e-400"]
    for spelling in spellings:
        value = orjson.dumps([_event(data={"": "X", "a": 1}), _event(id="evt-2")]).replace(b'"X"', spelling)
        assert cloudevents._in_common_shape(value, latest, LIMITS) is not None, spelling
        either, general = _both(value)
        assert _judged(either) == _judged(general), spelling
    read = parse_record(
        orjson.dumps([_event(data={"": "X", "a": 1})]).replace(b'"X"', b"1.50"), None, RECORD_TS_MS, LIMITS
    )
    assert _METERS.readings(read.members[0].event, read.exact_data, 0)[0].value == Decimal("1.500000000")
    assert read.stored_data(read.members[0]) == '{"":1.50,"a":1}'
    # No float holds it, and orjson refuses it: the general path rejects the record.
    too_large = orjson.dumps(_event(data={"": "X"})).replace(b'"X"', b"1e400")
    assert cloudevents._in_common_shape(too_large, latest, LIMITS) is None


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
_TIMES = st.one_of(
    st.sampled_from(
        [
            "2024-05-01T11:59:00Z",
            "2024-05-01T11:59:00.000000Z",
            "2024-05-01T11:59:00.5+00:00",
            "2024-05-01T13:59:00+02:00",
            "2024-05-01T12:05:00Z",
            "2024-05-01T12:05:00.000001Z",
            "2024-05-01 11:59:00Z",
            "2024-05-01T11:59:00",
            "1969-12-31T23:59:59Z",
            "2106-01-01T00:00:00Z",
        ]
    ),
    st.datetimes(min_value=datetime(2024, 4, 30), max_value=datetime(2024, 5, 2)).map(
        lambda moment: moment.isoformat() + "Z"
    ),
    st.integers(),
)
_ATTRIBUTES = st.one_of(st.text(min_size=1, max_size=3), st.text(min_size=250, max_size=260), st.just(""), st.none())
_MEMBERS = st.builds(
    lambda base, overrides, dropped: {k: v for k, v in (base | overrides).items() if k not in dropped},
    st.builds(_event, data=st.dictionaries(st.text(max_size=3), _JSON_VALUES, max_size=4)),
    st.fixed_dictionaries(
        {},
        optional={
            "specversion": st.sampled_from(["1.0", "1.1", 1]),
            "id": _ATTRIBUTES | st.text(min_size=510, max_size=514),  # 512 at most
            "subject": _ATTRIBUTES,  # 256 at most
            "time": _TIMES,
            "data": _JSON_VALUES,
            "datacontenttype": _ATTRIBUTES,
            "dataschema": _ATTRIBUTES,
            "region": _ATTRIBUTES,
        },
    ),
    st.sets(st.sampled_from(["id", "subject", "time", "data"]), max_size=1),
)


def _text(value: object, ascii_only: bool, spaced: bool) -> bytes:
    # The stdlib writes what orjson cannot (integers past 64 bits), and escapes or not.
    return json.dumps(value, ensure_ascii=ascii_only, indent=1 if spaced else None).encode()


@settings(max_examples=1500, deadline=None)
@given(
    members=st.lists(_MEMBERS, min_size=1, max_size=9),
    batch=st.booleans(),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    repeated=st.sampled_from([b"", b',"id":"evt-9"', b',"data":{"n":1}', b',"data":7']),
)
@example(
    members=[_event(data={"n": 2**63})], batch=True, ascii_only=False, spaced=False, repeated=b""
)  # a float to orjson, an int to msgspec
def test_either_path_judges_a_record_the_same(members, batch, ascii_only, spaced, repeated):
    value = _text(members if batch else members[0], ascii_only, spaced)
    if repeated and not spaced:  # a key given twice (in the last member): the last one counts, for both decoders
        end = 2 if batch else 1
        value = value[:-end] + repeated + value[-end:] if value[-end:] in (b"}", b"}]") else value
    either, general = _both(value)
    assert _judged(either) == _judged(general)
