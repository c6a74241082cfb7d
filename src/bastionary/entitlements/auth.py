"""API-key authentication and path-parameter checks for the entitlements HTTP API."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import SecretStr

from bastionary.apikeys import AuthError, KeyRing
from bastionary.entitlements.spec import FEATURE_REGEX

# Use ``fullmatch`` (or the helpers below): Python's ``$`` also matches before a final newline.
CUSTOMER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
FEATURE_PATTERN = re.compile(FEATURE_REGEX)

__all__ = ["AuthError", "authenticate", "valid_customer_id", "valid_feature"]


def authenticate(header: str | None, keys: Sequence[SecretStr]) -> None:
    """Accept ``Authorization: Bearer <key>`` for any of the plain ``keys``, else raise AuthError."""
    KeyRing(keys).authenticate(header)


def valid_customer_id(value: str) -> bool:
    return CUSTOMER_ID_PATTERN.fullmatch(value) is not None


def valid_feature(value: str) -> bool:
    return FEATURE_PATTERN.fullmatch(value) is not None
