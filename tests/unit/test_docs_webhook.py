"""``schemas/README.md`` on webhook delivery against the code: the example request is exactly
what the sender signs and sends (Standard Webhooks headers and signature), and the receiver
snippet it gives verifies signatures as documented (rotation, tolerance, tampering)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import orjson

from tests.unit.schema_helpers import NOTICE_VALIDATOR, readme_blocks, readme_section, schema_errors

# A real Standard Webhooks secret: whsec_ and the base64 of 24 random bytes.
README_WEBHOOK_SECRET = "whsec_FHfl2gDj6wJg1M4Q4lyzguxrvKbVLKH4"


def _readme_webhook_request() -> tuple[dict[str, str], bytes]:
    (example,) = readme_blocks("http")
    head, body = example.rstrip("\n").split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    return headers, body.encode()


def test_readme_webhook_example_is_signed_as_documented():
    import base64
    import hashlib
    import hmac

    from bastionary.dunning.notify import webhook

    section = readme_section("Webhook delivery")
    assert f"`{README_WEBHOOK_SECRET}`" in section
    key = webhook.secret_bytes(README_WEBHOOK_SECRET)
    assert len(key) >= 24  # what Standard Webhooks asks of a secret
    headers, body = _readme_webhook_request()
    event = orjson.loads(body)
    assert schema_errors(NOTICE_VALIDATOR, event["data"]) == []
    timestamp = int(headers[webhook.TIMESTAMP_HEADER])
    # Exactly the headers the code sends, in its order, for this notice, secret and time.
    assert headers == webhook.signed_headers(README_WEBHOOK_SECRET, event["id"], timestamp, body)
    assert (
        headers[webhook.ID_HEADER] == headers[webhook.IDEMPOTENCY_HEADER] == event["id"] == event["data"]["notice_id"]
    )
    assert headers["Content-Type"] == webhook.CONTENT_TYPE
    # ... and the signature is the documented formula, computed here without the module.
    signed = f"{event['id']}.{timestamp}.".encode() + body
    assert (
        headers[webhook.SIGNATURE_HEADER]
        == "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    )
    assert webhook.verify(README_WEBHOOK_SECRET, headers, body, now=timestamp + 299) == timestamp
    assert webhook.DEFAULT_TOLERANCE == 300 and "(default 300 seconds)" in section
    for header in (webhook.ID_HEADER, webhook.TIMESTAMP_HEADER, webhook.SIGNATURE_HEADER, webhook.IDEMPOTENCY_HEADER):
        assert f"**`{header}`**" in section


def test_readme_receiver_snippet_verifies_signatures():
    import base64
    import time as time_module

    from bastionary.dunning.notify import webhook

    (snippet,) = readme_blocks("python")
    assert not re.search(
        r"^\s*(?:import|from)\s+(?!base64|hashlib|hmac|time)\b", snippet, flags=re.MULTILINE
    )  # stdlib only
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    verify = namespace["verify"]
    _, body = _readme_webhook_request()
    notice = orjson.loads(body)["id"]
    now = int(time_module.time())
    # The snippet's clock held at ``now``: on a loaded machine a second passed between reading
    # it and a check, and a timestamp 301 s ahead fell within the 300 s tolerance (CI run Z81).
    namespace["time"] = SimpleNamespace(time=lambda: float(now))
    secret, old = README_WEBHOOK_SECRET, "whsec_" + base64.b64encode(b"the-old-secret-of-24byte").decode()

    def signed(secrets, timestamp: int = now, webhook_id: str = notice) -> dict[str, str]:
        return webhook.signed_headers(secrets, webhook_id, timestamp, body)

    assert verify([secret], signed(secret), body)
    assert verify([secret], {k.upper(): v for k, v in signed(secret).items()}, body)  # names in any case
    assert verify([secret], signed([old, secret]), body)  # the sender rotating
    assert verify([old, secret], signed(old), body)  # the receiver rotating
    assert verify(["plain-utf8-secret"], signed("plain-utf8-secret"), body)
    future = signed(secret)
    future["webhook-signature"] = "v2,xyz " + future["webhook-signature"]  # unknown versions are ignored
    assert verify([secret], future, body)
    assert not verify([secret], signed(old), body)
    assert not verify([secret], signed(secret), body + b" ")
    assert not verify([secret], signed(secret) | {"webhook-id": "another-notice"}, body)
    assert not verify([secret], signed(secret) | {"webhook-timestamp": str(now + 1)}, body)
    assert not verify([secret], signed(secret, now - 301), body)
    assert not verify([secret], signed(secret, now + 301), body)
    assert not verify([secret], signed(secret) | {"webhook-signature": "v2,xyz"}, body)
    assert not verify([secret], signed(secret) | {"webhook-timestamp": "9" * 5000}, body)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not verify([secret], {k: v for k, v in signed(secret).items() if k != name}, body)
