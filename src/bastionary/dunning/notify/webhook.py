"""Signed webhook delivery of dunning notices.

Header scheme (a public contract: receivers implement it, so change it only with a new
version tag):

    POST <url>
    Content-Type: application/cloudevents+json
    Idempotency-Key: <notice_id>
    Bastionary-Event-Id: <notice_id>
    Bastionary-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>

The body is the whole ``bastionary.dunning.step.v1`` CloudEvent, as JSON bytes, sent
unchanged on every attempt. The signed payload is the ASCII decimal timestamp, a dot, then
the raw body bytes. Each attempt is signed afresh, with its own timestamp.

``Bastionary-Signature`` may carry several ``v1=`` entries (one per secret while a secret
is being rotated); a receiver accepts the request when any entry matches any secret it
holds, compared in constant time. Unknown keys are ignored, so a future scheme can be
added alongside ``v1``.

Receivers reject a timestamp older or newer than their tolerance (default 300 seconds)
from their own clock — replay protection — and dedupe on ``Idempotency-Key``: a retried
notice keeps its key, so a receiver that answered too slowly sees it again.

Responses: 2xx is delivered. 408, 425, 429 and 5xx, timeouts and connection errors are
retried with backoff (a numeric ``Retry-After`` on 429/503 is honoured, bounded by the
backoff cap). Any other 4xx is a permanent failure and is not retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from pydantic import SecretStr

from bastionary.dunning.notify.retry import (
    Attempt,
    DeliveryError,
    DeliveryOutcome,
    with_retries,
)

SIGNATURE_HEADER = "Bastionary-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_ID_HEADER = "Bastionary-Event-Id"
CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_TOLERANCE = 300.0

RETRYABLE_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})

Secrets = str | bytes | Sequence[str | bytes]


class SignatureError(ValueError):
    """A signature header that does not verify; ``reason`` is one of REASONS."""

    REASONS = ("missing", "malformed", "stale", "mismatch")

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown signature error reason {reason!r}")
        super().__init__(message or reason)
        self.reason = reason


def _secret_list(secrets: Secrets) -> list[bytes]:
    items = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
    if not items:
        raise ValueError("no webhook secret given")
    return [s.encode() if isinstance(s, str) else bytes(s) for s in items]


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: Secrets, timestamp: int, body: bytes) -> str:
    """The ``Bastionary-Signature`` value; several secrets give several ``v1=`` entries."""
    parts = [f"t={int(timestamp)}"]
    parts += [f"v1={_digest(s, int(timestamp), body)}" for s in _secret_list(secret)]
    return ",".join(parts)


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not value:
            raise SignatureError("malformed", "signature header entry is not key=value")
        if key == "t":
            # Digits only: int() would also take "+12", " 12" or "1_2".
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureError("malformed", "signature header has a bad or repeated t=")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        raise SignatureError("malformed", "signature header has no t=")
    if not signatures:
        raise SignatureError("malformed", "signature header has no v1=")
    return timestamp, signatures


def verify(
    secrets: Secrets,
    header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check a ``Bastionary-Signature`` header against ``body``; return its timestamp.

    Raises :class:`SignatureError`. The signature is checked before the timestamp, so a
    forged request is reported as a mismatch whatever its timestamp says.
    """
    if not header or not header.strip():
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    timestamp, given = _parse(header)
    expected = [_digest(s, timestamp, body).encode() for s in _secret_list(secrets)]
    # Compare every pair without stopping early, so timing tells nothing about which matched.
    matched = False
    for candidate in given:
        for digest in expected:
            matched |= hmac.compare_digest(candidate.encode(), digest)
    if not matched:
        raise SignatureError("mismatch", "no signature matches")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale", f"timestamp {timestamp} is outside the {tolerance:g}s tolerance")
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
    secret = config.secret.get_secret_value()
    timeout = aiohttp.ClientTimeout(total=config.timeout)

    async def attempt() -> str:
        headers = {
            "Content-Type": CONTENT_TYPE,
            IDEMPOTENCY_HEADER: notice_id,
            EVENT_ID_HEADER: notice_id,
            SIGNATURE_HEADER: sign(secret, int(clock()), body),
        }
        try:
            async with session.post(
                config.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
        # aiohttp's timeouts are also ClientConnectionErrors: catch them first.
        except asyncio.TimeoutError:
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
