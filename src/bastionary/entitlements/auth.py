"""API-key authentication and path-parameter checks for the entitlements HTTP API."""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence

from pydantic import SecretStr

from bastionary.entitlements.spec import FEATURE_REGEX

# Use ``fullmatch`` (or the helpers below): Python's ``$`` also matches before a final newline.
CUSTOMER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
FEATURE_PATTERN = re.compile(FEATURE_REGEX)


class AuthError(Exception):
    """A request the API refuses: 401 without usable credentials, 403 with wrong ones."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or ("missing_api_key" if status == 401 else "invalid_api_key")


def authenticate(header: str | None, keys: Sequence[SecretStr]) -> None:
    """Accept ``Authorization: Bearer <key>`` for any configured key, else raise AuthError."""
    if not keys:
        # Fail closed: a deployment that forgot its keys must not serve everyone.
        raise AuthError(403, "no API keys configured", "invalid_api_key")
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError(401, "expected an 'Authorization: Bearer <api key>' header")
    presented = token.encode()
    matched = False
    for key in keys:
        # Compare with every key, never stopping at the first match: how long the check
        # takes must not tell which key (or how much of one) was right.
        matched |= hmac.compare_digest(presented, key.get_secret_value().encode())
    if not matched:
        raise AuthError(403, "the API key is not valid")


def valid_customer_id(value: str) -> bool:
    return CUSTOMER_ID_PATTERN.fullmatch(value) is not None


def valid_feature(value: str) -> bool:
    return FEATURE_PATTERN.fullmatch(value) is not None
