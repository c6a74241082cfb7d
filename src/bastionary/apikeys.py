"""API keys with scopes, stored hashed: who may call which part of the HTTP API.

Two sources, both read from the settings:

- ``BASTIONARY_API_KEYS``: plain keys, comma-separated. Each is an ``admin`` key (every
  scope, every customer), as before scopes existed.
- ``BASTIONARY_API_KEY_FILE``: one JSON object per line, ``{"name", "sha256", "scopes",
  "customer"}``. Only the SHA-256 of a key is stored. A key is 32 random bytes
  (:func:`new_key`), so a fast hash is enough: there is no password to guess. The file is
  read again when it changes, so a key is added, rotated or revoked without a restart.

A key limited to a ``customer`` (a customer portal's key) reads and writes that customer
only; the views check every customer a request names against it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

log = structlog.get_logger(__name__)

# Use ``fullmatch`` (or valid_customer_id): Python's ``$`` also matches before a final newline.
# Any id the writes and the usage events take (1-256 characters) but control characters: a
# customer billed under "acme corp" or "a+b@example.com" is read at its own routes too, and may
# have a key of its own. Here, below every route that checks it, and the key file.
CUSTOMER_ID_PATTERN = re.compile(r"^[^\u0000-\u001f\u007f]{1,256}$")
CUSTOMER_ID_RULE = "customer ids are 1-256 characters, none a control character"


def valid_customer_id(value: str) -> bool:
    return CUSTOMER_ID_PATTERN.fullmatch(value) is not None


Scope = Literal["ingest", "read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
KEY_PREFIX = "bk_"


class AuthError(Exception):
    """A request the API refuses: 401 without usable credentials, 403 with wrong ones."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or ("missing_api_key" if status == 401 else "invalid_api_key")


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[Scope]
    customer: str | None = None  # set: this key reads and writes one customer only

    def allows(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def may_see(self, customer_id: str | None) -> bool:
        """A customer-limited key sees its own customer only; ``None`` (all customers) is refused."""
        return self.customer is None or customer_id == self.customer


class KeyEntry(BaseModel):
    """One line of the key file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(min_length=1)
    customer: str | None = None

    @field_validator("customer")
    @classmethod
    def _a_customer_id(cls, value: str | None) -> str | None:
        # The rule every route checks a customer against: a key limited to an id the routes
        # accept must be one the key file accepts too.
        if value is not None and not valid_customer_id(value):
            raise ValueError(CUSTOMER_ID_RULE)
        return value


class KeyFileError(ValueError):
    pass


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, scopes: Iterable[Scope], customer: str | None = None) -> tuple[str, KeyEntry]:
    """A fresh key (shown once) and the line to store for it."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = KeyEntry(name=name, sha256=key_digest(key), scopes=sorted(set(scopes)), customer=customer)
    return key, entry


def read_key_file(path: Path) -> list[KeyEntry]:
    entries = []
    names: set[str] = set()
    digests: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = KeyEntry.model_validate(orjson.loads(line))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise KeyFileError(f"{path}:{number}: not a key entry: {str(exc).splitlines()[0][:200]}") from None
        if entry.name in names:
            raise KeyFileError(f"{path}:{number}: a second key named {entry.name!r}")
        if entry.sha256 in digests:
            # One key, two entries: only one set of scopes and customer could hold, silently.
            raise KeyFileError(f"{path}:{number}: the same key (sha256) as line {digests[entry.sha256]}")
        names.add(entry.name)
        digests[entry.sha256] = number
        entries.append(entry)
    return entries


class KeyRing:
    """The keys a worker accepts. ``key_file`` is re-read when its modification time changes;
    a file that turns unreadable keeps the keys it last had (and the error is raised once at
    start, so a bad file never starts a worker)."""

    def __init__(self, plain: Sequence[SecretStr], key_file: Path | None = None):
        self._plain = [key.get_secret_value().encode() for key in plain]
        self._file = key_file
        self._stamp: tuple[int, int] | None = None
        self._hashed: dict[str, ApiKey] = {}
        self._failed: tuple[str, str] | None = None
        if key_file is not None:
            self._reload(strict=True)

    def _reload(self, strict: bool = False) -> None:
        if self._file is None:
            return
        try:
            stat = os.stat(self._file)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            entries = read_key_file(self._file)
        except (OSError, KeyFileError) as exc:
            if strict:
                if isinstance(exc, OSError):
                    raise KeyFileError(f"BASTIONARY_API_KEY_FILE {self._file}: {exc.strerror}") from None
                raise
            self._tell_failure(exc)
            return
        self._failed = None
        self._stamp = stamp
        self._hashed = {entry.sha256: ApiKey(entry.name, frozenset(entry.scopes), entry.customer) for entry in entries}

    def _tell_failure(self, exc: Exception) -> None:
        failed = (type(exc).__name__, str(exc))
        if failed != self._failed:
            # Once per failure: the edit did not take, so a key it meant to revoke still works.
            self._failed = failed
            log.error("API key file not read; the keys read before stay in force", path=str(self._file), error=str(exc))

    @property
    def empty(self) -> bool:
        return not self._plain and not self._hashed

    def authenticate(self, header: str | None) -> ApiKey:
        """The key of ``Authorization: Bearer <key>``, else AuthError."""
        if self._file is not None:
            self._reload()
        if self.empty:
            # Fail closed: a deployment that forgot its keys must not serve everyone.
            raise AuthError(403, "no API keys configured", "invalid_api_key")
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthError(401, "expected an 'Authorization: Bearer <api key>' header")
        hashed = self._hashed.get(key_digest(token))
        if hashed is not None:
            return hashed
        presented = token.encode()
        matched = False
        for key in self._plain:
            # Every plain key is compared, never stopping at the first match: how long the
            # check takes must not tell which key (or how much of one) was right.
            matched |= hmac.compare_digest(presented, key)
        if matched:
            return ApiKey("admin", frozenset({"admin"}))
        raise AuthError(403, "the API key is not valid")
