"""What a customer can still draw from each grant at a moment: the `credits balance` answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Literal

from bastionary.credits.ledger import FUNDING_ORDER, Grant
from bastionary.money import MINOR_UNITS, minor_unit

GrantStatus = Literal["active", "used_up", "pending", "expired", "voided"]


@dataclass(frozen=True)
class GrantBalance:
    grant: Grant
    status: GrantStatus
    remaining: Decimal  # what an invoice issued at the moment could draw; 0 unless active
    # ``used_up``: active, but invoices have drawn all of it (a balance line, not a grant state)


def grant_status(grant: Grant, moment: datetime) -> GrantStatus:
    """A void wins over an expiry, and both over a grant that has not started."""
    if grant.voided_at is not None and grant.voided_at <= moment:
        return "voided"
    if grant.expires_at is not None and grant.expires_at <= moment:
        return "expired"
    return "pending" if grant.effective_at > moment else "active"


def balances(grants: list[Grant], drawn: dict[str, Decimal], moment: datetime) -> list[GrantBalance]:
    """One line per grant, in the order invoices draw from them."""
    lines = []
    for grant in sorted(grants, key=lambda g: g.order):
        status = grant_status(grant, moment)
        left = max(grant.amount - drawn.get(grant.grant_id, Decimal(0)), Decimal(0))
        if grant.currency in MINOR_UNITS:
            # Draws are whole minor units: of 10.005 (older data) an invoice draws 10.00 and the
            # rest lapses, so the balance must not promise the 10.01 that 10.005 rounds to.
            left = left.quantize(minor_unit(grant.currency), rounding=ROUND_DOWN)
        if status == "active" and left == 0:
            status = "used_up"
        lines.append(GrantBalance(grant, status, left if status == "active" else Decimal(0)))
    return lines


def totals(lines: list[GrantBalance]) -> dict[str, dict[str, Decimal]]:
    """What is available per currency, by funding (promotional, paid, carried) and in all
    (``available``), currencies in order."""
    out: dict[str, dict[str, Decimal]] = {}
    for line in lines:
        currency = out.setdefault(line.grant.currency, {**dict.fromkeys(FUNDING_ORDER, Decimal(0))})
        currency[line.grant.funding] += line.remaining
    for currency in out.values():
        currency["available"] = sum((currency[f] for f in FUNDING_ORDER), Decimal(0))
    return dict(sorted(out.items()))
