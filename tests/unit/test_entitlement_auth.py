"""API-key authentication and the path-parameter patterns of the entitlements API."""

from __future__ import annotations

import hmac

import pytest
from pydantic import SecretStr

from bastionary import apikeys
from bastionary.entitlements.auth import (
    CUSTOMER_ID_PATTERN,
    FEATURE_PATTERN,
    AuthError,
    authenticate,
    valid_customer_id,
    valid_feature,
)

KEYS = [SecretStr("key-one-0123456789"), SecretStr("key-two-abcdefghij")]


def refused(header, keys=KEYS) -> AuthError:
    with pytest.raises(AuthError) as info:
        authenticate(header, keys)
    return info.value


@pytest.mark.parametrize(
    "header", ["Bearer key-one-0123456789", "Bearer key-two-abcdefghij", "bearer key-two-abcdefghij"]
)
def test_any_configured_key_is_accepted(header):
    assert authenticate(header, KEYS) is None


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Bearer", "Bearer ", "Basic a2V5LW9uZQ==", "key-one-0123456789", "Token key-one-0123456789",
     "Bearer key-one 0123456789"],
)  # fmt: skip
def test_missing_or_malformed_header_is_401(header):
    error = refused(header)
    assert (error.status, error.code) == (401, "missing_api_key") and error.message


@pytest.mark.parametrize(
    "token",
    ["wrong", "key-one-012345678", "key-one-01234567890", "KEY-ONE-0123456789", "key-one-0123456789\x00", "ключ"],
)
def test_a_wrong_key_is_403(token):
    error = refused(f"Bearer {token}")
    assert (error.status, error.code) == (403, "invalid_api_key")


def test_no_configured_keys_fails_closed():
    for header in ("Bearer anything", "Bearer ", None):
        error = refused(header, keys=[])
        assert (error.status, error.message) == (403, "no API keys configured")


def test_auth_error_is_an_exception_with_status_and_message():
    error = AuthError(401, "nope")
    assert isinstance(error, Exception) and str(error) == "nope" and error.code == "missing_api_key"


def test_every_key_is_compared_with_compare_digest(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        assert isinstance(a, bytes) and isinstance(b, bytes)
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    authenticate("Bearer key-one-0123456789", KEYS)  # matches the first key...
    assert [b for _, b in calls] == [b"key-one-0123456789", b"key-two-abcdefghij"]  # ...and still tries the second
    calls.clear()
    refused("Bearer nope")
    assert len(calls) == len(KEYS)


def test_the_key_is_not_in_the_error():
    error = refused("Bearer key-one-wrong")
    assert "key-one" not in error.message and "key-one" not in repr(error)


# Any id a write or a usage event takes (1-256 characters), control characters aside: until
# 2026-12-07 "cust 1", "cüst" and "a+b@x.com" were billed but refused 400 at their own reads.
@pytest.mark.parametrize(
    "value",
    [
        "cust-1",
        "C",
        "acme.com:user@eu_1",
        "a" * 256,
        "0",
        "-cust",
        ".x",
        "cust 1",
        "cust/1",
        "cüst",
        "a+b@x.com",
        "a%2F",
    ],
)
def test_valid_customer_ids(value):
    assert valid_customer_id(value) and CUSTOMER_ID_PATTERN.match(value)


@pytest.mark.parametrize("value", ["", "a" * 257, "cust\n", "\x00", "a\tb", "\x7f"])
def test_invalid_customer_ids(value):
    assert not valid_customer_id(value)


@pytest.mark.parametrize(("value", "ok"), [("sso", True), ("api_calls2", True), ("Sso", False), ("1x", False),
                                           ("a-b", False), ("", False), ("sso\n", False)])  # fmt: skip
def test_feature_pattern(value, ok):
    assert valid_feature(value) is ok
    assert (FEATURE_PATTERN.fullmatch(value) is not None) is ok
