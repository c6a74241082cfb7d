"""The read API's query parameters: whatever a caller sends, a value or BadQuery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from bastionary.worker.api.reads import BadQuery, query_time, usage_filters

names = st.one_of(st.text(max_size=12), st.sampled_from(["filter[model]", "filter[", "filter", "filter[]", "at"]))


@given(st.lists(st.tuples(names, st.text(max_size=30)), max_size=6))
def test_any_query_string_is_read_or_refused(pairs):
    query = "&".join(f"{quote(name, safe='[]')}={quote(value)}" for name, value in pairs)
    request = make_mocked_request("GET", "/v1/meters/m/query?" + query)
    for reader in (usage_filters, lambda r: query_time(r, "at"), lambda r: query_time(r, "from")):
        try:
            reader(request)
        except BadQuery:
            pass


def test_filters_are_read_per_dimension_and_refused_twice():
    assert usage_filters(make_mocked_request("GET", "/q?filter[model]=m&filter[region]=eu")) == {
        "model": "m",
        "region": "eu",
    }
    for query in ("filter[model]=a&filter[model]=b", "filterx=1", "filter=1"):
        try:
            usage_filters(make_mocked_request("GET", "/q?" + query))
        except BadQuery:
            continue
        raise AssertionError(query)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01",
        "0999-12-31T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "1969-12-31T23:59Z",
    ],
)
def test_a_time_outside_the_range_of_usage_and_billing_times_is_a_bad_query(text):
    # A year before 1000 reached ClickHouse (a 500), and an offset past Python's range raised
    # OverflowError (a 500 too).
    with pytest.raises(BadQuery, match="outside 1970-01-01"):
        query_time(make_mocked_request("GET", "/q?at=" + quote(text)), "at")


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))])))
def test_any_time_is_read_in_utc_or_refused(moment):
    request = make_mocked_request("GET", "/q?at=" + quote(moment.isoformat()))
    try:
        read = query_time(request, "at")
    except BadQuery:
        assert not datetime(1970, 1, 1, tzinfo=UTC) <= moment <= datetime(2106, 1, 1, tzinfo=UTC)
        return
    assert read == moment and read is not None and read.utcoffset() == timedelta(0)
