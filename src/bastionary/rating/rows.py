"""The rows rating writes for billing events: subscriptions and credit movements.

Apart from :mod:`bastionary.rating.ports` because the billing events build them
(:mod:`bastionary.rating.events`), and the ports name the customers' terms, which are made
from those events: here, neither depends on the other.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple


class SubscriptionRow(NamedTuple):
    """A subscription event: a row of ``subscriptions``."""

    event_id: str
    event_type: str  # created | changed | canceled
    subscription_id: str
    customer_id: str
    plan: str
    start: datetime | None
    billing_anchor: datetime | None
    effective_at: datetime | None
    received_at: datetime
    billing_email: str
    backfill: int = 0  # 1: a created event that asks for its past periods to be rated


class LedgerRow(NamedTuple):
    """A credit movement: a row of ``credit_ledger``."""

    movement_id: str
    kind: str  # granted | purchased | voided | applied | expired | carried | credit_note
    grant_id: str
    customer_id: str
    amount: Decimal
    currency: str
    priority: int
    effective_at: datetime | None
    expires_at: datetime | None
    invoice_id: str
    recorded_at: datetime
    price_paid: Decimal | None = None  # a purchase's: what was paid for ``amount`` of credit
    payment_reference: str = ""  # a purchase's payment
