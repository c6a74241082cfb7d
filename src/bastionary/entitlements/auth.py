"""API-key authentication and path-parameter checks for the entitlements HTTP API."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import SecretStr

from bastionary.apikeys import CUSTOMER_ID_PATTERN, CUSTOMER_ID_RULE, AuthError, KeyRing, valid_customer_id
from bastionary.entitlements.spec import FEATURE_REGEX

# Use ``fullmatch``: Python's ``$`` also matches before a final newline.
FEATURE_PATTERN = re.compile(FEATURE_REGEX)

__all__ = ["CUSTOMER_ID_PATTERN", "CUSTOMER_ID_RULE", "AuthError", "authenticate", "valid_customer_id", "valid_feature"]


def authenticate(header: str | None, keys: Sequence[SecretStr]) -> None:
    """Accept ``Authorization: Bearer <key>`` for any of the plain ``keys``, else raise AuthError."""
    KeyRing(keys).authenticate(header)


def valid_feature(value: str) -> bool:
    return FEATURE_PATTERN.fullmatch(value) is not None
