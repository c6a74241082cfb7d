"""Dunning emails: rendered from the package's Jinja2 templates, sent over SMTP.

Each template is a pair in ``bastionary/dunning/templates``: ``<name>.txt.j2`` (plain text,
not escaped, and the place the subject is set with ``{% set subject = ... %}``) and
``<name>.html.j2`` (autoescaped). Names starting with ``_`` are shared pieces, not templates.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from typing import Any

import aiosmtplib
import jinja2
from pydantic import SecretStr

from bastionary.dunning.notify.retry import (
    Attempt,
    DeliveryError,
    DeliveryOutcome,
    with_retries,
)

# The template used when a step names none.
DEFAULT_TEMPLATES = {"remind": "friendly"}

# Spelled out rather than strftime("%B"), which follows the process locale.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# RFC 5322 dot-atom-text: what may stand left of the "@" in a Message-ID.
_MSGID_LEFT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
MESSAGE_ID_DOMAIN = "bastionary.notices"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_tls: bool = False
    timeout: float = 10.0
    max_attempts: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 10.0


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("bastionary.dunning", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def available_templates() -> set[str]:
    """Names that have both a text and an HTML template."""
    names = set(_environment().list_templates())
    return {
        name.removesuffix(".txt.j2")
        for name in names
        if name.endswith(".txt.j2") and not name.startswith("_") and name.replace(".txt.j2", ".html.j2") in names
    }


def _parse_moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _human_date(moment: datetime) -> str:
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}"


def _period(start: str, end: str) -> str:
    first, stop = _parse_moment(start), _parse_moment(end)
    # Billing periods are half-open: one ending at midnight on 1 March covers February.
    last = stop - timedelta(days=1) if stop.time() == time(0) and stop.date() > first.date() else stop
    return f"{_human_date(first)} to {_human_date(last)}"


def _money(value: object, currency: str) -> str:
    """The amount exactly as sent, with its currency; parsed only to reject garbage."""
    text = str(value).strip()
    try:
        if not Decimal(text).is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    return f"{text} {currency}"


def _context(notice: Mapping[str, Any], company: str) -> dict[str, Any]:
    currency = str(notice["currency"])
    days = int(notice["days_overdue"])
    return {
        "company": company,
        "notice_id": notice["notice_id"],
        "invoice_id": notice["invoice_id"],
        "customer_id": notice["customer_id"],
        "step": notice["step"],
        "action": notice["action"],
        "currency": currency,
        "amount_due": _money(notice["amount_due"], currency),
        "invoice_total": _money(notice["invoice_total"], currency),
        "due_date": _human_date(_parse_moment(notice["due_at"])),
        "period": _period(notice["period_start"], notice["period_end"]),
        "days_overdue": days,
        "overdue": f"{days} day" if days == 1 else f"{days} days",
    }


def template_name(notice: Mapping[str, Any]) -> str:
    action: str = notice["action"]
    template: str | None = notice.get("template")
    return template or DEFAULT_TEMPLATES.get(action, action)


def render_email(notice: Mapping[str, Any], *, company: str = "Bastionary") -> EmailContent:
    """Subject, text and HTML for a notice; ValueError for a template that does not exist."""
    name = template_name(notice)
    available = available_templates()
    if name not in available:
        raise ValueError(f"unknown email template {name!r}; available: {', '.join(sorted(available))}")
    env = _environment()
    context = _context(notice, company)
    text_module = env.get_template(f"{name}.txt.j2").make_module(context)
    subject = " ".join(str(getattr(text_module, "subject", "")).split())
    if not subject:
        raise ValueError(f"email template {name!r} sets no subject")
    html = env.get_template(f"{name}.html.j2").render(context, subject=subject)
    return EmailContent(subject=subject, text=str(text_module), html=html)


def message_id(notice_id: str) -> str:
    """Deterministic, so a resent notice is recognisably the same message."""
    if not _MSGID_LEFT.match(notice_id):
        raise ValueError(f"notice id {notice_id!r} cannot form a Message-ID")
    return f"<{notice_id}@{MESSAGE_ID_DOMAIN}>"


def build_message(config: SmtpConfig, notice: Mapping[str, Any], content: EmailContent) -> EmailMessage:
    """A multipart/alternative message; no To header when the notice has no recipient.

    ValueError for a recipient that is not one plain address, or a header value with a line break.
    """
    message = EmailMessage()
    message["Subject"] = content.subject
    message["From"] = config.sender
    recipient = notice.get("recipient_email")
    if recipient:
        message["To"] = recipient
        addresses = message["To"].addresses
        # The envelope is read from this header: a billing_email the intake pattern lets
        # through may parse as another address ("a(b@example.com" is the local user "a",
        # "x,ap@example.com" two of them), and the invoice would go to someone else.
        if len(addresses) != 1 or addresses[0].addr_spec != recipient:
            raise ValueError(f"recipient email {recipient!r} is not one plain address")
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(notice["notice_id"])
    message["X-Bastionary-Notice-Id"] = notice["notice_id"]
    message["X-Bastionary-Invoice-Id"] = notice["invoice_id"]
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message


# A handshake cut short (the server or the network dropped the connection): the next
# attempt may well complete it.
_TLS_DROPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_mismatch(cause: BaseException | None, config: SmtpConfig) -> DeliveryError | None:
    """SMTP_TLS=true against a server that does not speak TLS on connect, or None.

    Such a server answers the handshake with its plain greeting, on every attempt: retried,
    each notice spent all its attempts and was dead-lettered as a vague connection failure
    that did not name the setting to change. Certificate checks stay retryable, as before.
    """
    if not config.use_tls or not isinstance(cause, ssl.SSLError):
        return None
    if isinstance(cause, (*_TLS_DROPS, ssl.SSLCertVerificationError)):
        return None
    return DeliveryError(
        "smtp server does not support the configuration: TLS handshake failed"
        f" ({cause.reason or type(cause).__name__}); BASTIONARY_SMTP_TLS=true needs a server that speaks"
        " TLS on connect (usually port 465); one that upgrades a plain connection (usually port 587)"
        " needs BASTIONARY_SMTP_STARTTLS=true instead",
        permanent=True,
    )


def _smtp_error(error: aiosmtplib.SMTPException, config: SmtpConfig) -> DeliveryError:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in error.recipients] or [0]
        first = error.recipients[0] if error.recipients else None
        detail = f"smtp {first.code} {first.message}" if first else "smtp recipients refused"
        # Only a refusal that every recipient got as a 5xx is final; a 4xx is "try later".
        return DeliveryError(detail, permanent=min(codes) >= 500)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return DeliveryError(f"smtp {error.code} {error.message}", permanent=error.code >= 500)
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return DeliveryError("smtp timeout", permanent=False)
    if isinstance(error, (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected)):
        cause = error.__cause__
        mismatch = _tls_mismatch(cause, config)
        if mismatch is not None:
            return mismatch
        if isinstance(cause, ConnectionRefusedError):
            return DeliveryError("connection refused", permanent=False)
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else None
        return DeliveryError(f"connection failed: {reason}" if reason else "connection failed", permanent=False)
    if isinstance(error, aiosmtplib.SMTPNotSupported):
        # The server lacks what the config asks for (STARTTLS, AUTH): retrying cannot help.
        return DeliveryError(f"smtp not supported: {error.message}", permanent=True)
    if type(error) is aiosmtplib.SMTPException:
        # aiosmtplib raises the bare class only when the server lacks what the config asks for
        # (SMTP_STARTTLS=true and no STARTTLS offered, a username and no AUTH): the same answer
        # on every attempt, so retrying only delays the dead letter that names it.
        return DeliveryError(f"smtp server does not support the configuration: {error.message}", permanent=True)
    return DeliveryError(f"smtp error: {error.message}", permanent=False)


async def send_email(
    config: SmtpConfig,
    message: EmailMessage,
    *,
    on_attempt: Callable[[Attempt], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> DeliveryOutcome:
    if not message["To"]:
        return DeliveryOutcome("email", False, 0, "no recipient email")
    password = config.password.get_secret_value() if config.password is not None else None

    async def attempt() -> str:
        try:
            _, response = await aiosmtplib.send(
                message,
                hostname=config.host,
                port=config.port,
                username=config.username,
                password=password,
                start_tls=config.starttls,
                use_tls=config.use_tls,
                timeout=config.timeout,
            )
        except aiosmtplib.SMTPException as error:
            raise _smtp_error(error, config) from None
        except ValueError as error:
            # aiosmtplib's refusal of its arguments (start_tls with use_tls, a control character
            # in an address): the same on every attempt, so final. Raised, it would stop the
            # worker, which would read the same notice again on restart.
            raise DeliveryError(f"smtp configuration or message refused: {error}", permanent=True) from None
        except OSError as error:
            # Raised outside aiosmtplib's own wrapping, e.g. while resolving the host.
            raise DeliveryError(
                f"connection failed: {error.strerror or type(error).__name__}", permanent=False
            ) from None
        # send() returns only once the server accepted the data, which is a 250.
        return f"250 {response}"

    return await with_retries(
        "email",
        attempt,
        max_attempts=config.max_attempts,
        base=config.backoff_base,
        cap=config.backoff_cap,
        on_attempt=on_attempt,
        sleep=sleep,
        rng=rng,
    )
