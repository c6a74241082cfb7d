"""What is still due on an invoice, once payments, credit notes and refunds are known.

One reckoning for the credit note decision and for dunning, so the two never disagree on
what a customer still owes (they did: dunning chased 20.00 of the 50.00 owed after a
chargeback that followed a note's give-back). Exact: every amount is already exact in the
invoice's currency, so nothing here rounds.
"""

from __future__ import annotations

from decimal import Decimal


def still_paid(paid: Decimal, given_back: Decimal, refunds_reported: Decimal, notes_refunded: Decimal) -> Decimal:
    """What was paid and not yet given back.

    ``paid`` is already net of every refund the payment system reported; what notes gave
    back (``given_back``: to the balance or refunded) is taken off too, except their refunds
    the payment system has reported (counted in ``paid`` already). A reported refund is taken
    as a note's up to what notes refunded (``notes_refunded``), since the report does not say
    who asked for it; the rest (a chargeback, a refund made in the payment system) is the
    payment system's alone."""
    reported_for_notes = min(refunds_reported, notes_refunded)
    return paid - (given_back - reported_for_notes)


def amount_due(
    total: Decimal,
    paid: Decimal,
    credited: Decimal,
    given_back: Decimal,
    refunds_reported: Decimal,
    notes_refunded: Decimal,
) -> Decimal:
    """What the invoice, less its credit notes, still asks, less what was paid and not yet
    given back; never below zero, and never above the invoice's total: refunds reported beyond
    what was paid (a mistyped amount, a refund of a payment never reported here) would
    otherwise have the customer dunned for them (5000.00 due on a 100.00 invoice)."""
    due = total - credited - still_paid(paid, given_back, refunds_reported, notes_refunded)
    return min(max(due, Decimal(0)), total)
