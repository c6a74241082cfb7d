"""What the client raises."""

from __future__ import annotations

from typing import Any


class BastionaryError(Exception):
    """The API answered with an error: its HTTP status, code and message."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class ApiUnreachable(BastionaryError):
    """The API did not answer: the connection failed or timed out, after every retry.

    A :class:`BastionaryError` with ``status`` 0 and code ``api_unreachable``, so one
    ``except BastionaryError`` handles every failed call; ``cause`` is the transport's error.
    """

    def __init__(self, cause: BaseException):
        super().__init__(0, "api_unreachable", f"{type(cause).__name__}: {cause}".rstrip(": "))
        self.cause = cause


class EventsRejected(BastionaryError):
    """Some posted events broke the usage contract; the others were accepted."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]):
        super().__init__(status, code, message, body)
        self.accepted: list[str] = list(body.get("ids", []))
        self.rejected: list[dict[str, Any]] = list(body.get("rejected", []))


class DeliveryFailed(Exception):
    """Tracked events that could not be delivered after every retry."""

    def __init__(self, events: list[dict[str, Any]], cause: BaseException):
        super().__init__(f"{len(events)} event(s) not delivered: {cause}")
        self.events = events
        self.cause = cause
