"""A real SMTP peer for delivery tests (aiosmtpd on a free local port) and the trail store the
notifier writes to, in memory."""

from __future__ import annotations

import socket
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SmtpSink:
    """An aiosmtpd handler that keeps what it accepts, (sender, recipients, message), or
    refuses every recipient."""

    def __init__(self, refuse_with: str | None = None) -> None:
        self.refuse_with = refuse_with
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.refuse_with:
            return self.refuse_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def start_sink(handler: SmtpSink) -> Controller:
    """A server offering neither STARTTLS nor AUTH, started; stop it with ``.stop()``."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller


class TrailStore:
    """The notifier's store of delivery rows: what it has delivered per notice and channel."""

    def __init__(self) -> None:
        self.trail: list[Any] = []

    def delivered_channels(self, notice_id: str) -> set[str]:
        return {r.channel for r in self.trail if r.event_id.startswith(f"{notice_id}:") and r.kind == "delivered"}

    def insert_trail(self, rows: list[Any]) -> None:
        self.trail += rows
