"""The address parsers behind BASTIONARY_KAFKA_BOOTSTRAP, the ClickHouse DSNs and every URL the
CLI shows, fed text built from the pieces that break such parsers (brackets, colons, at signs,
ports that are no number, credentials in the query): each answers, refuses with a message, or
masks; none lets another exception reach start-up."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bastionary.settings import (
    ConfigError,
    _bootstrap_problem,
    _server_address_readable,
    load_settings,
    url_without_credentials,
)
from tests.unit.env_helpers import without_settings

HOSTS = st.sampled_from(
    [
        "kafka",
        "10.0.0.1",
        "::1",
        "[::1]",
        "[::1",
        "::1]",
        "[]",
        "",
        " ",
        "ho st",
        "ünï",
        "a@b",
        "h:1:2",
        "[fe80::1%eth0]",
    ]
)
PORTS = st.sampled_from(["", "9092", "0", "65535", "65536", "-1", " 9092 ", "١٢", "9e3", "99999999999999999999", "x"])
SEPARATORS = st.sampled_from([":", "", "::", "]:", ":]"])


@st.composite
def bootstrap_entries(draw) -> str:
    scheme = draw(st.sampled_from(["", "", "PLAINTEXT://", "://"]))
    return scheme + draw(HOSTS) + draw(SEPARATORS) + draw(PORTS)


BOOTSTRAPS = st.one_of(
    st.lists(bootstrap_entries(), min_size=1, max_size=4).map(",".join),
    st.text(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(BOOTSTRAPS)
def test_bootstrap_check_answers_with_a_message_or_none(bootstrap):
    problem = _bootstrap_problem(bootstrap)
    assert problem is None or (isinstance(problem, str) and problem)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["kafka", "10.0.0.1", "[::1]"]), st.integers(1, 65535)), min_size=1, max_size=3)
)
def test_well_formed_bootstraps_pass(entries):
    assert _bootstrap_problem(",".join(f"{host}:{port}" for host, port in entries)) is None


USERINFO = st.sampled_from(["", "user@", "user:pa:ss@", "user:s3cret@", ":s3cret@", "u@v:s3cret@", "@", "user:@"])
QUERIES = st.sampled_from(
    ["", "?access_token=s3cret", "?password=s3cret&x=1", "?a=1&b", "?=", "?token", "?%zz=1", "?sig=s3cret#frag"]
)


@st.composite
def urls(draw) -> str:
    scheme = draw(st.sampled_from(["http://", "https://", "chdb://", "", "http:/", "HTTP://"]))
    port = draw(PORTS)
    return (
        scheme
        + draw(USERINFO)
        + draw(HOSTS)
        + (":" + port if port else "")
        + draw(st.sampled_from(["", "/", "/db", "/a/b"]))
        + draw(QUERIES)
    )


ADDRESSES = st.one_of(urls(), st.text(max_size=60))


@settings(max_examples=500, deadline=None)
@given(ADDRESSES)
def test_server_dsn_check_passes_or_refuses_without_echoing_the_dsn(dsn):
    try:
        _server_address_readable(SecretStr(dsn))
    except ValueError as exc:
        assert "s3cret" not in str(exc)


@settings(max_examples=500, deadline=None)
@given(urls(), st.booleans())
def test_a_url_is_shown_without_its_password_or_credential_values(url, every_query_value):
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return  # settings refuse such a URL before anything shows it
    if not parts.netloc:
        return  # no scheme: a path, which settings refuse for every URL the CLI shows
    shown = url_without_credentials(url, mask_every_query_value=every_query_value)
    assert "s3cret" not in shown


@settings(max_examples=300, deadline=None)
@given(urls(), urls())
def test_the_shown_configuration_never_holds_a_dsn_password(dsn, reader_dsn):
    with pytest.MonkeyPatch.context() as patch:
        without_settings(patch)
        patch.setenv("BASTIONARY_CLICKHOUSE_DSN", dsn)
        patch.setenv("BASTIONARY_CLICKHOUSE_READER_DSN", reader_dsn)
        try:
            loaded = load_settings()
        except ConfigError as exc:
            assert "s3cret" not in str(exc)
            return
        assert "s3cret" not in json.dumps(loaded.redacted())
