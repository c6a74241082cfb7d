"""The read API's query parameters: whatever a caller sends, a value or BadQuery."""

from __future__ import annotations

from urllib.parse import quote

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
