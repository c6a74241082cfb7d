"""Credit grants and their allocation to an invoice total."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Literal

from bastionary.money import minor_unit

FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
# Ledger movement ids are UUIDv5 of their parts in this namespace: the same movement, the same id.
LEDGER_NAMESPACE = uuid.UUID("0d7f6c1e-54a1-4b7f-8c57-4c1d5d1d0b11")


# What a grant's credit is, from the ledger row that opened it: ``granted`` (promotional),
# ``purchased`` (paid for: a top-up), or the customer's balance, ``carried``: a negative
# invoice's remainder (``carried``) or what a credit note gave back (``credit_note``).
Funding = Literal["promotional", "paid", "carried"]
FUNDING_OF_KIND: dict[str, Funding] = {
    "granted": "promotional",
    "purchased": "paid",
    "carried": "carried",
    "credit_note": "carried",
}
# Promotional credit is drawn first (it has no cash value and usually expires), then paid
# credit (it may expire if its purchase says so), then the carried balance (never expires).
FUNDING_ORDER: dict[str, int] = {"promotional": 0, "paid": 1, "carried": 2}


def movement_id(*parts: str) -> str:
    return str(uuid.uuid5(LEDGER_NAMESPACE, "|".join(parts)))


@dataclass(frozen=True)
class Grant:
    grant_id: str
    customer_id: str
    amount: Decimal
    currency: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None = None
    voided_at: datetime | None = None
    funding: Funding = "promotional"

    def usable_at(self, moment: datetime, currency: str) -> bool:
        return (
            self.currency == currency
            and self.effective_at <= moment
            and (self.expires_at is None or self.expires_at > moment)
            and (self.voided_at is None or self.voided_at > moment)
        )

    @property
    def order(self) -> tuple[int, int, datetime, datetime, str]:
        """Promotional, then paid, then carried credit; within each, lower priority number
        first, then earliest expiry, then the oldest grant."""
        return (
            FUNDING_ORDER[self.funding],
            self.priority,
            self.expires_at or FAR_FUTURE,
            self.effective_at,
            self.grant_id,
        )


@dataclass(frozen=True)
class Allocation:
    grant_id: str
    amount: Decimal
    funding: Funding = "promotional"


def remaining(grants: list[Grant], drawn: dict[str, Decimal]) -> dict[str, Decimal]:
    return {g.grant_id: max(Decimal(0), g.amount - drawn.get(g.grant_id, Decimal(0))) for g in grants}


def allocate(
    grants: list[Grant], drawn: dict[str, Decimal], total: Decimal, currency: str, at: datetime
) -> list[Allocation]:
    """Draw up to ``total`` from the grants usable at ``at`` (the period end), in grant order.

    Never more than a grant's remaining balance, never more than the total, never negative.
    """
    left = max(total, Decimal(0))
    balances = remaining(grants, drawn)
    cent = minor_unit(currency)  # draws are whole minor units, so the invoice still adds up
    allocations = []
    for grant in sorted((g for g in grants if g.usable_at(at, currency)), key=lambda g: g.order):
        if left <= 0:
            break
        take = min(balances[grant.grant_id], left).quantize(cent, rounding=ROUND_DOWN)
        if take > 0:
            allocations.append(Allocation(grant.grant_id, take, grant.funding))
            left -= take
    return allocations


def usable_balance(grants: list[Grant], drawn: dict[str, Decimal], currency: str, at: datetime) -> Decimal:
    """What invoices in ``currency`` issued at ``at`` could still draw, over every funding."""
    left = remaining(grants, drawn)
    return sum((left[g.grant_id] for g in grants if g.usable_at(at, currency)), Decimal(0))
