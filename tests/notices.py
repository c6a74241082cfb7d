"""One dunning notice (the data of `bastionary.dunning.step.v1`, schemas/dunning-notice.schema.json),
for the tests that deliver or render one."""

from __future__ import annotations

from typing import Any


def dunning_notice(channels: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "notice_id": "dn-0001-step-2",
        "invoice_id": "inv-2026-02-0042",
        "customer_id": "cust-acme",
        "step": 2,
        "action": "final_notice",
        "days_overdue": 21,
        "amount_due": "1234.50",
        "currency": "EUR",
        "due_at": "2026-03-01T00:00:00+00:00",
        "issued_at": "2026-02-01T00:00:00+00:00",
        "period_start": "2026-01-01T00:00:00+00:00",
        "period_end": "2026-02-01T00:00:00+00:00",
        "invoice_total": "1500.00",
        "template": None,
        "channels": channels,
        "recipient_email": "ap@acme.example",
        "policy": "default",
    } | overrides
