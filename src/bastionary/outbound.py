"""What Bastionary writes for others: CloudEvents, dead letters' headers, the webhook secret format.

One way to spell each, so every topic a consumer reads (invoices, credits, dunning notices,
entitlement changes, the dead-letter topics) follows the same contract.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

Headers = list[tuple[str, bytes | None]]
MESSAGE_LIMIT = 4096  # bytes of error.message
DEAD_LETTER_VALUE_LIMIT = 64 * 1024
DEAD_LETTER_KEY_LIMIT = 4 * 1024  # a customer id; a longer key is hostile
# Standard Webhooks secrets are whsec_<base64>; settings check one at start-up, the sender signs with it.
SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret


def cloud_event(event_type: str, event_id: str, source: str, subject: str, time: str, data: Any) -> bytes:
    """A structured-mode CloudEvent 1.0 in JSON; ``id`` is what consumers dedupe on."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": event_type,
            "subject": subject,
            "time": time,
            "datacontenttype": "application/json",
            "data": data,
        }
    )


@dataclass(frozen=True, slots=True)
class Source:
    """Where a dead-lettered record came from."""

    topic: str
    partition: int
    offset: int
    index: int | None = None  # a member of a batch record


def dead_letter_headers(
    code: str, message: str, source: Source | None = None, *, exception: str | None = None
) -> Headers:
    """The headers every dead letter carries, in this order: ``error.class``, ``error.message``
    (UTF-8, at most 4096 bytes), ``source.topic``, ``source.partition``, ``source.offset``,
    ``source.index`` (a batch member), ``error.exception`` (an ``internal_error``)."""
    headers: Headers = [("error.class", code.encode()), ("error.message", utf8_prefix(message, MESSAGE_LIMIT))]
    if source is not None:
        headers += [
            ("source.topic", source.topic.encode()),
            ("source.partition", str(source.partition).encode()),
            ("source.offset", str(source.offset).encode()),
        ]
        if source.index is not None:
            headers.append(("source.index", str(source.index).encode()))
    if exception is not None:
        headers.append(("error.exception", exception.encode()))
    return headers


def capped_original(key: bytes | None, value: bytes, headers: Headers) -> tuple[bytes | None, bytes]:
    """The original key and value a dead letter carries, cut where longer than
    :data:`DEAD_LETTER_KEY_LIMIT` / :data:`DEAD_LETTER_VALUE_LIMIT`; each cut adds its
    ``source.*_bytes`` header (the original size) to ``headers``.

    Every dead-letter topic takes them this way: a dead letter the worker's producer refuses
    (its max request size, 1,000,000 bytes, counts key, value and headers) would stop the
    worker before the record is acked, and a restart would meet the same record again."""
    if len(value) > DEAD_LETTER_VALUE_LIMIT:
        headers.append(("source.value_bytes", str(len(value)).encode()))
        value = value[:DEAD_LETTER_VALUE_LIMIT]
    if key is not None and len(key) > DEAD_LETTER_KEY_LIMIT:
        headers.append(("source.key_bytes", str(len(key)).encode()))
        key = key[:DEAD_LETTER_KEY_LIMIT]
    return key, value


def utf8_prefix(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` in UTF-8, never cutting a character in two."""
    encoded = text.encode("utf-8", "backslashreplace")
    return encoded if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore").encode()


def secret_bytes(secret: str | bytes) -> bytes:
    """The HMAC key a secret stands for: ``whsec_<base64>`` decoded, another str as UTF-8."""
    if isinstance(secret, (bytes, bytearray)):
        return bytes(secret)
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        # The secret itself stays out of the message: it ends up in logs and config errors.
        raise ValueError(
            f"a webhook secret starting with {SECRET_PREFIX} must be followed by standard base64"
            " (A-Z, a-z, 0-9, +, /, with = padding)"
        ) from None
