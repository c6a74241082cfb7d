"""What dunning needs from storage, and the trail rows it writes.

The ClickHouse implementation is :class:`bastionary.storage.dunning.ClickHouseDunningStore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from bastionary.dunning.engine import Case, Record


class ReceivableRow(NamedTuple):
    """A finalized invoice dunning chases: a row of ``receivables``."""

    invoice_id: str
    customer_id: str
    plan: str
    currency: str
    total: Decimal
    issued_at: datetime
    due_at: datetime
    period_start: datetime
    period_end: datetime
    received_at: datetime
    backfill: int = 0  # 1: issued by a backfill


class PaymentRow(NamedTuple):
    """A payment, refund or void: a row of ``payments``."""

    event_id: str
    kind: str
    payment_id: str
    invoice_id: str
    customer_id: str
    amount: Decimal
    currency: str
    paid_at: datetime
    reason: str
    received_at: datetime


@dataclass(frozen=True)
class TrailRow:
    """A ``dunning_events`` row that is not a decision: an attempt, a delivery, a response."""

    event_id: str
    invoice_id: str
    customer_id: str
    kind: str
    at: datetime
    step: int = 0
    action: str = ""
    channel: str = ""
    detail: str = ""
    until: datetime | None = None


class DunningStore(Protocol):
    def cases(self, customers: set[str] | None = None) -> list[Case]: ...

    def store_decisions(self, decided: list[tuple[Case, Record]], at: datetime, published: int = 0) -> None: ...

    def unpublished(self) -> list[tuple[str, str, str, str]]: ...

    def mark_published(self, published: list[tuple[str, dict[str, Any]]]) -> None: ...

    def insert_trail(self, rows: list[TrailRow]) -> None: ...

    def delivered_channels(self, notice_id: str) -> set[str]: ...
