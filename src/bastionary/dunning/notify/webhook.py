"""Signed webhook delivery of dunning notices, in the Standard Webhooks scheme.

Header scheme (a public contract: receivers implement it, so change it only with a new
version tag). It is Standard Webhooks (https://www.standardwebhooks.com), so the verifier
libraries published for it, in any language, check our requests given a ``whsec_`` secret:

    POST <url>
    Content-Type: application/cloudevents+json
    webhook-id: <notice_id>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}." + body)>
    Idempotency-Key: <notice_id>

The body is the whole ``bastionary.dunning.step.v1`` CloudEvent, as JSON bytes, sent
unchanged on every attempt. The signed content is the ``webhook-id``, a dot, the
``webhook-timestamp`` as sent (ASCII decimal), a dot, then the raw body bytes: the id that
receivers dedupe on is signed with the body. Each attempt is signed afresh, with its own
timestamp. ``Idempotency-Key`` repeats ``webhook-id`` for generic idempotency middleware;
it is not signed, so dedupe on ``webhook-id``.

The key: a secret written ``whsec_<base64>`` stands for its base64-decoded bytes, as in
Standard Webhooks; any other string for its UTF-8 bytes. Prefer the ``whsec_`` form: the
Standard Webhooks libraries base64-decode every secret, so only that form works with them.

``webhook-signature`` is a space-separated list of ``<version>,<signature>`` entries: one
``v1`` entry per secret while a secret is being rotated. A receiver accepts the request
when any ``v1`` entry matches any secret it holds, compared in constant time; entries of
other versions are ignored, so a future scheme can be sent alongside ``v1``.

Receivers reject a timestamp older or newer than their tolerance (default 300 seconds)
from their own clock — replay protection — and dedupe on ``webhook-id``: a retried notice
keeps its id, so a receiver that answered too slowly sees it again.

Responses: 2xx is delivered. 408, 425, 429 and 5xx, timeouts and connection errors are
retried with backoff (a numeric ``Retry-After`` on 429/503 is honoured, bounded by the
backoff cap). Any other 4xx is a permanent failure and is not retried.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from pydantic import SecretStr

from bastionary.dunning.notify.retry import (
    Attempt,
    DeliveryError,
    DeliveryOutcome,
    with_retries,
)
from bastionary.outbound import secret_bytes

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
CONTENT_TYPE = "application/cloudevents+json"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300.0

RETRYABLE_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})

Secrets = str | bytes | Sequence[str | bytes]


class SignatureError(ValueError):
    """A signed request that does not verify; ``reason`` is one of REASONS."""

    REASONS = ("missing", "malformed", "stale", "mismatch")

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown signature error reason {reason!r}")
        super().__init__(message or reason)
        self.reason = reason


def _keys(secrets: Secrets) -> list[bytes]:
    items = [secrets] if isinstance(secrets, (str, bytes, bytearray)) else list(secrets)
    if not items:
        raise ValueError("no webhook secret given")
    keys = [secret_bytes(s) for s in items]
    if not all(keys):
        raise ValueError("a webhook secret is empty")
    return keys


def _digest(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secrets: Secrets, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value; several secrets give several ``v1`` entries."""
    stamp = str(int(timestamp))
    return " ".join(
        f"{SIGNATURE_VERSION},{base64.b64encode(_digest(key, webhook_id, stamp, body)).decode()}"
        for key in _keys(secrets)
    )


def signed_headers(secrets: Secrets, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery attempt, in the order they are sent."""
    return {
        "Content-Type": CONTENT_TYPE,
        ID_HEADER: webhook_id,
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: sign(secrets, webhook_id, timestamp, body),
        IDEMPOTENCY_HEADER: webhook_id,
    }


def _signature_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """(id, timestamp, signature) from ``headers``, whatever the names' case."""
    wanted = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    found: dict[str, list[str]] = {name: [] for name in wanted}
    # items(), not get(): multi-dicts (aiohttp, http.server) list a repeated header twice.
    for name, value in headers.items():
        if name.lower() in found:
            found[name.lower()].append(value.strip())
    absent = [name for name in wanted if not any(found[name])]
    if absent:
        raise SignatureError("missing", f"no {', '.join(absent)} header")
    repeated = [name for name in wanted if len(found[name]) > 1]
    if repeated:
        # Two ids would let a replay pass the signature with one and the dedupe with the other.
        raise SignatureError("malformed", f"repeated {', '.join(repeated)} header")
    return found[ID_HEADER][0], found[TIMESTAMP_HEADER][0], found[SIGNATURE_HEADER][0]


def _v1_signatures(header: str) -> list[bytes]:
    signatures: list[bytes] = []
    for entry in header.split():
        version, sep, value = entry.partition(",")
        if not sep or not version or not value:
            raise SignatureError("malformed", f"{SIGNATURE_HEADER} entry is not <version>,<signature>")
        if version != SIGNATURE_VERSION:
            continue  # a scheme we do not know, sent alongside v1
        try:
            digest = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue  # cannot match any key; a good entry beside it still may
        if len(digest) == hashlib.sha256().digest_size:
            signatures.append(digest)
    if not signatures:
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} has no usable {SIGNATURE_VERSION} entry")
    return signatures


def verify(
    secrets: Secrets,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check a request's ``webhook-*`` headers against ``body``; return its timestamp.

    ``headers`` is any mapping (aiohttp's, http.server's, a dict); names match in any case.
    Raises :class:`SignatureError`: ``missing`` (one of the three headers absent or blank),
    ``malformed`` (a header repeated, a timestamp that is not decimal digits, an entry that
    is not ``<version>,<signature>``, no ``v1`` entry holding a base64 SHA-256 digest),
    ``mismatch``, then ``stale``: the signature is checked before the timestamp, so a forged
    request is reported as a mismatch whatever its timestamp says.
    """
    keys = _keys(secrets)
    webhook_id, stamp, header = _signature_headers(headers)
    # Digits only: int() would also take "+12", " 12" or "1_2", which the sender never signs.
    # At most 20 of them: unix seconds need 11 for millennia, and int() refuses 4301 anyway.
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 20:
        raise SignatureError("malformed", f"{TIMESTAMP_HEADER} is not unix seconds")
    given = _v1_signatures(header)
    expected = [_digest(key, webhook_id, stamp, body) for key in keys]
    # Compare every pair without stopping early, so timing tells nothing about which matched.
    matched = False
    for candidate in given:
        for digest in expected:
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise SignatureError("mismatch", "no signature matches")
    timestamp = int(stamp)
    # Compared, not subtracted: a huge timestamp would overflow a float difference.
    if not now - tolerance <= timestamp <= now + tolerance:
        raise SignatureError("stale", f"timestamp {stamp} is outside the {tolerance:g}s tolerance")
    return timestamp


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: SecretStr
    timeout: float = 10.0
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After; the HTTP-date form is ignored (our backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _connection_detail(error: aiohttp.ClientConnectionError) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"connection failed: {error.os_error.strerror or type(error.os_error).__name__}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "connection closed by server"
    return f"connection error: {type(error).__name__}"


async def deliver_webhook(
    config: WebhookConfig,
    session: aiohttp.ClientSession,
    notice_id: str,
    body: bytes,
    *,
    on_attempt: Callable[[Attempt], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.time,
) -> DeliveryOutcome:
    """POST ``body`` to ``config.url``, signed, retrying what a later attempt could fix."""
    # Decoded once, before any attempt: a bad whsec_ secret is a configuration error, not a
    # delivery failure to retry.
    key = secret_bytes(config.secret.get_secret_value())
    timeout = aiohttp.ClientTimeout(total=config.timeout)

    async def attempt() -> str:
        headers = signed_headers(key, notice_id, int(clock()), body)
        try:
            async with session.post(
                config.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
        # aiohttp's timeouts are also ClientConnectionErrors: catch them first.
        except TimeoutError:
            raise DeliveryError(f"timeout after {config.timeout:g}s", permanent=False) from None
        except aiohttp.InvalidURL:
            raise DeliveryError("invalid url", permanent=True) from None
        except aiohttp.ClientConnectionError as error:
            raise DeliveryError(_connection_detail(error), permanent=False) from None
        except aiohttp.ClientError as error:
            raise DeliveryError(f"client error: {type(error).__name__}", permanent=False) from None

        detail = f"http {status}"
        if 200 <= status < 300:
            return detail
        if status in RETRYABLE_STATUSES or status >= 500:
            wait = _retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
            raise DeliveryError(detail, permanent=False, retry_after=wait)
        # Redirects are not followed (that would hand the signed notice to another host), so
        # a 3xx is a misconfigured endpoint, as is any other 4xx: retrying cannot fix either.
        raise DeliveryError(detail, permanent=True)

    return await with_retries(
        "webhook",
        attempt,
        max_attempts=config.max_attempts,
        base=config.backoff_base,
        cap=config.backoff_cap,
        on_attempt=on_attempt,
        sleep=sleep,
        rng=rng,
    )
