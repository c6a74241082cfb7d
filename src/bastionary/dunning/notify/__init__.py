"""Delivery of dunning notices: signed webhooks and templated email, each with retries."""

from bastionary.dunning.notify.email import (
    EmailContent,
    SmtpConfig,
    available_templates,
    build_message,
    render_email,
    send_email,
)
from bastionary.dunning.notify.retry import (
    Attempt,
    DeliveryError,
    DeliveryOutcome,
    backoff_delay,
    with_retries,
)
from bastionary.dunning.notify.webhook import (
    ID_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    WebhookConfig,
    deliver_webhook,
    sign,
    signed_headers,
    verify,
)
from bastionary.outbound import secret_bytes

__all__ = [
    "IDEMPOTENCY_HEADER",
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Attempt",
    "DeliveryError",
    "DeliveryOutcome",
    "EmailContent",
    "SignatureError",
    "SmtpConfig",
    "WebhookConfig",
    "available_templates",
    "backoff_delay",
    "build_message",
    "deliver_webhook",
    "render_email",
    "secret_bytes",
    "send_email",
    "sign",
    "signed_headers",
    "verify",
    "with_retries",
]
