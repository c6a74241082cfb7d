"""Real, local delivery peers: an SMTP sink and a webhook receiver.

The demo catches its dunning email and webhooks with them, and the tests check what
arrived. Both are real servers on 127.0.0.1 (aiosmtpd speaks SMTP; the receiver is an HTTP
server that verifies the Standard Webhooks ``webhook-*`` headers and dedupes on the signed
``webhook-id`` the way the README asks a production receiver to).

Both take a ``delay`` (seconds, or a ``(low, high)`` range drawn uniformly per request) to
play a slow peer: the request is kept first and answered only after the delay, so a sender
that dies during it has been heard by the peer without knowing it, the window in which a
notice can reach a peer twice.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bastionary.devstack.broker import free_port
from bastionary.dunning.notify.webhook import (
    ID_HEADER,
    SignatureError,
    verify,
)

Delay = float | tuple[float, float]


def _delay_source(delay: Delay, seed: int | None = None) -> Callable[[], float]:
    """A function returning the seconds to wait before answering one request."""
    if isinstance(delay, tuple):
        low, high = delay
        if not 0 <= low <= high:
            raise ValueError(f"delay range must be 0 <= low <= high, got {delay!r}")
        rng = random.Random(seed)
        lock = threading.Lock()

        def draw() -> float:
            with lock:
                return rng.uniform(low, high)

        return draw
    if delay < 0:
        raise ValueError(f"delay must not be negative, got {delay!r}")
    return lambda: float(delay)


class SmtpSink:
    """Accepts every message and keeps it; ``messages`` are parsed EmailMessages.

    ``delay`` holds back the 250 after the message is kept (see the module docstring)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, delay: Delay = 0.0, seed: int | None = None
    ) -> None:
        self.host, self.port = host, port or free_port()
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._delay = _delay_source(delay, seed)
        self._controller = Controller(self, hostname=host, port=self.port)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # aiosmtpd handler hook
        raw = cast(bytes, envelope.original_content or envelope.content)  # decode_data is off: never str
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
        pause = self._delay()
        if pause > 0:
            await asyncio.sleep(pause)  # the sink's own loop: other sessions go on meanwhile
        return "250 Message accepted"

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def received(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)


@dataclass
class WebhookDelivery:
    idempotency_key: str  # the signed webhook-id: what the receiver dedupes on
    timestamp: int
    body: bytes
    duplicate: bool


@dataclass
class WebhookReceiver:
    """POSTs with a valid signature are kept; a repeated webhook-id is marked duplicate.

    ``fail_first`` answers 503 to that many requests first, to exercise the retries.
    ``delay`` holds back every answer, after the request is kept (see the module docstring)."""

    secret: str
    host: str = "127.0.0.1"
    fail_first: int = 0
    deliveries: list[WebhookDelivery] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    delay: Delay = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._delay = _delay_source(self.delay, self.seed)
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/dunning"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def unique(self) -> list[WebhookDelivery]:
        with self._lock:
            return [d for d in self.deliveries if not d.duplicate]

    def duplicates(self) -> list[WebhookDelivery]:
        """Deliveries of a webhook-id seen before: what a deduping receiver drops."""
        with self._lock:
            return [d for d in self.deliveries if d.duplicate]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    if receiver.fail_first > 0:
                        receiver.fail_first -= 1
                        return self._answer(503)
                try:
                    # verify() reads the headers through items(), which http.server's Message has;
                    # its Mapping annotation is narrower than what it accepts.
                    stamp = verify(receiver.secret, self.headers, body, now=time.time())  # type: ignore[arg-type]
                except SignatureError as error:
                    with receiver._lock:
                        receiver.rejected.append(error.reason)
                    return self._answer(400)
                # The signed id, not Idempotency-Key: only it cannot be changed on the way.
                webhook_id = self.headers[ID_HEADER].strip()
                with receiver._lock:
                    seen = any(d.idempotency_key == webhook_id for d in receiver.deliveries)
                    receiver.deliveries.append(WebhookDelivery(webhook_id, stamp, body, seen))
                self._answer(200)
                return None

            def _answer(self, status: int) -> None:
                pause = receiver._delay()
                if pause > 0:
                    time.sleep(pause)  # one thread per request: other requests go on meanwhile
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender went away (killed) while we held the answer back

            def log_message(self, *args: object) -> None:  # quiet: the test or demo reports what matters
                pass

        return Handler
