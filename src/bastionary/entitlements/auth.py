"""API-key authentication and path-parameter checks for the entitlements HTTP API."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import SecretStr

from bastionary.apikeys import AuthError, KeyRing
from bastionary.entitlements.spec import FEATURE_REGEX

# Use ``fullmatch`` (or the helpers below): Python's ``$`` also matches before a final newline.
# Any id the writes and the usage events take (1-256 characters) but control characters: a
# customer billed under "acme corp" or "a+b@example.com" is read at its own routes too (the
# narrower pattern of before refused them with 400 while every write took them).
CUSTOMER_ID_PATTERN = re.compile(r"^[^\u0000-\u001f\u007f]{1,256}$")
CUSTOMER_ID_RULE = "customer ids are 1-256 characters, none a control character"
FEATURE_PATTERN = re.compile(FEATURE_REGEX)

__all__ = ["AuthError", "authenticate", "valid_customer_id", "valid_feature"]


def authenticate(header: str | None, keys: Sequence[SecretStr]) -> None:
    """Accept ``Authorization: Bearer <key>`` for any of the plain ``keys``, else raise AuthError."""
    KeyRing(keys).authenticate(header)


def valid_customer_id(value: str) -> bool:
    return CUSTOMER_ID_PATTERN.fullmatch(value) is not None


def valid_feature(value: str) -> bool:
    return FEATURE_PATTERN.fullmatch(value) is not None
