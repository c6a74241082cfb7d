"""Helpers of the dunning tests: billing events in, dunning_events out."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bastionary.kafka import UsageProducer, read_topic

CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "dunning_catalog.yaml"
DUE = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "whsec_dGVzdC1zZWNyZXQtb2YtMjQtYnl0ZXMh"  # Standard Webhooks form: 24 bytes


def cloudevent(event_type: str, event_id: str, subject: str, when: datetime, data: dict) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "dunning-test",
        "type": event_type,
        "subject": subject,
        "time": when.isoformat(),
        "data": data,
    }


def invoice_event(invoice_id: str, customer: str, total: str, plan: str = "pro", currency: str = "USD") -> dict:
    issued = DUE - timedelta(days=14)
    return cloudevent(
        "bastionary.invoice.finalized.v1",
        invoice_id,
        customer,
        issued,
        {
            "invoice_id": invoice_id,
            "customer_id": customer,
            "plan": plan,
            "currency": currency,
            "total": total,
            "issued_at": issued.isoformat(),
            "due_at": DUE.isoformat(),
            "period_start": (issued - timedelta(days=28)).isoformat(),
            "period_end": issued.isoformat(),
        },
    )


def subscription_event(customer: str, email: str) -> dict:
    start = DUE - timedelta(days=60)
    return cloudevent(
        "bastionary.subscription.created.v1",
        f"sub-{customer}",
        customer,
        start,
        {
            "subscription_id": f"sub-{customer}",
            "customer_id": customer,
            "plan": "pro",
            "start": start.isoformat(),
            "billing_email": email,
        },
    )


def payment_event(
    payment_id: str, invoice_id: str, customer: str, amount: str, currency: str = "USD", at: datetime = DUE
) -> dict:
    return cloudevent(
        "bastionary.payment.succeeded.v1",
        f"evt-{payment_id}-{amount}",
        customer,
        at,
        {
            "payment_id": payment_id,
            "invoice_id": invoice_id,
            "amount": amount,
            "currency": currency,
            "paid_at": at.isoformat(),
        },
    )


def send(stack, topic: str, payloads: list[dict]) -> None:
    async def go():
        async with UsageProducer(stack.bootstrap) as producer:
            await asyncio.gather(*[await producer.send(f"{stack.prefix}{topic}", p) for p in payloads])

    asyncio.run(go())


def read(stack, topic: str, expect: int | None = None, idle: float = 2.0):
    return asyncio.run(read_topic(stack.bootstrap, f"{stack.prefix}{topic}", idle_seconds=idle, expect=expect))


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # tables appear once the worker migrated
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}; last: {last!r}")


def events(stack, kind: str, invoice_id: str | None = None) -> list[tuple]:
    where = " AND invoice_id = {i:String}" if invoice_id else ""
    return stack.query(
        "SELECT invoice_id, step, action, channel, detail FROM dunning_events FINAL WHERE kind = {k:String}"
        + where
        + " ORDER BY invoice_id, step, at, recorded_at",
        k=kind,
        i=invoice_id or "",
    )


def notices(stack) -> set[tuple[str, int, str]]:
    return {(i, s, a) for i, s, a, _, _ in events(stack, "notice")}
