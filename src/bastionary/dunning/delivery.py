"""Delivering one notice from dunning.notices over its channels (email, webhook).

Order per channel, and what a crash right after each step does:
1. read which channels of this notice_id are recorded as delivered -> nothing sent yet
2. send (retries with backoff inside; each attempt recorded)      -> the record is redelivered
   by Kafka (the offset is not committed) and the channel is sent again: webhook receivers
   see the same webhook-id (the notice_id) and drop it; an email goes out a second time
   with the same Message-ID. This window, between the peer accepting and step 3, is the
   only way a notice reaches a peer twice: copies of one notice (a dunner restarted between
   publishing and marking publishes it again) are delivered one after the other, so the
   second finds the first's channels recorded.
3. record ``delivered`` (or ``delivery_failed`` + dead letter)    -> done; a redelivered
   record finds the channel delivered and sends nothing
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog

from bastionary.dunning.dunner import STEP_TYPE
from bastionary.dunning.notify import (
    Attempt,
    DeliveryOutcome,
    SmtpConfig,
    WebhookConfig,
    build_message,
    deliver_webhook,
    render_email,
    send_email,
)
from bastionary.dunning.policy import CHANNELS
from bastionary.dunning.ports import DunningStore, TrailRow
from bastionary.locks import KeyedLocks

log = structlog.get_logger(__name__)

# (original value, reason code, message) -> sends it to dunning.dlq
DeadLetter = Callable[[bytes, str, str], Awaitable[None]]


INVALID_NOTICE = "invalid_notice"
# What delivering a step notice reads (the channels, the email templates): a notice without
# one would raise in the middle of a delivery.
DELIVERY_FIELDS = (
    "notice_id",
    "invoice_id",
    "customer_id",
    "step",
    "action",
    "channels",
    "days_overdue",
    "amount_due",
    "invoice_total",
    "currency",
    "due_at",
    "period_start",
    "period_end",
)

MAX_STEP = 65535  # dunning_events.step is a UInt16


def notice_problem(data: object) -> str | None:
    """Why ``data`` is not a step notice the notifier can deliver, or None."""
    if not isinstance(data, dict):
        return "not a bastionary.dunning.step.v1 CloudEvent with a data object"
    missing = [name for name in DELIVERY_FIELDS if name not in data]
    if missing:
        return f"the notice lacks {', '.join(missing)}"
    if not all(isinstance(data[name], str) and data[name] for name in ("notice_id", "invoice_id", "customer_id")):
        return "notice_id, invoice_id and customer_id must be non-empty strings"
    step = data["step"]
    # Both land in every dunning_events row of the delivery (step a UInt16, action a String):
    # a value ClickHouse refuses would fail the write, stop the worker and, read again on
    # restart, stop it again, holding back every notice behind it on the partition.
    if not isinstance(step, int) or isinstance(step, bool) or not 1 <= step <= MAX_STEP:
        return f"step must be a whole number from 1 to {MAX_STEP}"
    if not isinstance(data["action"], str) or not data["action"]:
        return "action must be a non-empty string"
    channels = data["channels"]
    if not isinstance(channels, list) or not all(channel in CHANNELS for channel in channels):
        return f"channels must be a list of {', '.join(CHANNELS)}"
    if len(set(channels)) != len(channels):
        # Each listed channel is delivered at once, side by side: a repeat would reach the
        # customer twice.
        return "channels repeat"
    return None


class Notifier:
    def __init__(
        self,
        store: DunningStore,
        webhook: WebhookConfig | None,
        smtp: SmtpConfig | None,
        dead_letter: DeadLetter,
        company: str = "Bastionary",
    ):
        self.store = store
        self.webhook = webhook
        self.smtp = smtp
        self.dead_letter = dead_letter
        self.company = company
        self._session: aiohttp.ClientSession | None = None
        # One copy of a notice at a time, within one worker (a notice's copies share its
        # partition, so one worker reads them). The agent's delivery slots share one stream, and a dunner restarted between publishing and marking publishes a
        # notice again: both copies could pass step 1 before either reached step 3.
        self._notices: KeyedLocks[str] = KeyedLocks()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, value: bytes) -> list[DeliveryOutcome]:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict) and event.get("type") != STEP_TYPE:
            return []  # a reinstatement: nothing to deliver
        data = event.get("data") if isinstance(event, dict) else None
        problem = notice_problem(data)
        if problem is not None or not isinstance(data, dict):
            # Raised, it would stop the worker (the agent takes any error for a storage
            # failure), and the restart would read the same record and stop again: no notice
            # of any customer behind it on the partition would be delivered.
            await self.dead_letter(value, INVALID_NOTICE, problem or "not a step notice")
            log.warning("not a step notice", reason=problem)
            return []
        async with self._notices.held(data["notice_id"]):  # a second copy waits, then finds it delivered
            done = await asyncio.to_thread(self.store.delivered_channels, data["notice_id"])
            pending = [c for c in data.get("channels", []) if c not in done]
            return list(await asyncio.gather(*(self._deliver(channel, value, data) for channel in pending)))

    async def _deliver(self, channel: str, value: bytes, data: dict[str, Any]) -> DeliveryOutcome:
        notice = data["notice_id"]

        async def record_attempt(attempt: Attempt) -> None:
            await self._trail(
                data,
                "attempt",
                channel,
                f"#{attempt.number} {'ok' if attempt.ok else 'failed'}: {attempt.detail}",
                f"{notice}:{channel}:attempt:{uuid.uuid4()}",
            )

        if channel == "webhook" and self.webhook is not None:
            outcome = await deliver_webhook(self.webhook, self._client(), notice, value, on_attempt=record_attempt)
        elif channel == "email" and self.smtp is not None:
            try:
                message = build_message(self.smtp, data, render_email(data, company=self.company))
            except (ValueError, TypeError) as error:
                # The notice's own data (an invoice id with a line break from another producer,
                # an unknown template, an address that is not one): the same on every redelivery.
                # Raised, it would stop the worker, and the restart would meet it again, holding
                # back every notice behind it on the partition.
                outcome = DeliveryOutcome(channel, False, 0, f"cannot build the email: {error}")
            else:
                outcome = await send_email(self.smtp, message, on_attempt=record_attempt)
        else:
            outcome = DeliveryOutcome(channel, False, 0, f"{channel} is not configured")
        if outcome.ok:
            await self._trail(
                data, "delivered", channel, f"after {outcome.attempts} attempt(s)", f"{notice}:{channel}:delivered"
            )
        else:
            await self._trail(data, "delivery_failed", channel, outcome.reason, f"{notice}:{channel}:failed")
            await self.dead_letter(value, f"{channel}_delivery_failed", f"{channel}: {outcome.reason}")
            log.warning("notice not delivered", notice_id=notice, channel=channel, reason=outcome.reason)
        return outcome

    async def _trail(self, data: dict[str, Any], kind: str, channel: str, detail: str, event_id: str) -> None:
        row = TrailRow(
            event_id,
            data["invoice_id"],
            data["customer_id"],
            kind,
            datetime.now(UTC),
            data["step"],
            data["action"],
            channel,
            detail,
        )
        await asyncio.to_thread(self.store.insert_trail, [row])

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session
