"""What rating needs from storage (the rows it hands over are :mod:`bastionary.rating.rows`).

The ClickHouse implementation is :class:`bastionary.storage.billing.ClickHouseBillingStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from bastionary.credits.ledger import Grant
from bastionary.metering.meters import Meter
from bastionary.rating.billed import Billed
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.invoice import Invoice, Line, Subscription
from bastionary.rating.plans import Plan
from bastionary.rating.pricing import Usage
from bastionary.rating.rows import LedgerRow
from bastionary.rating.tax import TaxRate


@dataclass(frozen=True)
class RatedInvoice:
    """One rated period, ready to store: the invoice, its cutoff, its lines and ledger movements."""

    invoice: Invoice
    cutoff: datetime
    lines: list[Line]
    ledger: list[LedgerRow]


Grants = tuple[dict[str, list[Grant]], dict[str, Decimal]]  # per customer; drawn per grant


class BillingStore(Protocol):
    """Rating's storage. An invoice's row is the commit marker of its store: its lines and
    ledger movements count (in ``billed`` and in what ``grants`` reports drawn) only once the
    invoice's row exists, so a store interrupted before it leaves nothing that counts."""

    def unpublished_documents(self) -> list[str]: ...

    def mark_published(self, invoices: list[tuple[dict[str, Any], datetime]]) -> None: ...

    def invoice_ids(self) -> set[str]: ...

    def subscriptions(self, plans: Mapping[str, Plan]) -> list[Subscription]: ...

    def grants(self) -> Grants:
        """Every customer's grants (voids applied), and what stored invoices drew from each
        (their ``applied`` and ``expired`` movements)."""
        ...

    def customer_terms(self) -> Mapping[str, CustomerTerms]:
        """Each customer's terms (billing details, tax profile, auto top-up rules) from its record."""
        ...

    def usage_by_customer(
        self,
        meter: Meter,
        filters: dict[str, str],
        start: datetime,
        end: datetime,
        as_of: datetime,
        customer: str | None = None,
    ) -> dict[str, Usage]:
        """Each customer's usage (``customer``: that one's only: a preview's single read)."""
        ...

    def billed(self, subscription_id: str) -> Billed:
        """What the subscription's stored invoices billed, from their lines."""
        ...

    def rates_then(self, customer_id: str, subscription_id: str) -> dict[datetime, list[TaxRate]]:
        """Per period of the subscription invoiced (its ``period`` invoice stored), the tax
        rates that invoice applied (:func:`bastionary.rating.tax.rates_of_document`); a period
        whose rates cannot be told is left out."""
        ...

    def rates_first_billed(self, customer_id: str, subscription_id: str) -> dict[tuple[datetime, str], list[TaxRate]]:
        """Per (period, line key) the subscription's stored invoices billed an amount for, the
        tax rates of the first invoice (by ``issued_at``) that billed it more than zero: where a
        fee billed in advance was collected, whichever invoice (a period's, an ``advance`` one)
        that was. A key whose first invoice's rates cannot be told is left out."""
        ...

    def store_invoices(self, rated: list[RatedInvoice]) -> None:
        """Store the invoices (published=0) with their lines and movements, the invoice rows
        last; rows an interrupted earlier store of the same invoices left and these do not
        rewrite are zeroed, so an invoice's stored rows are exactly what it says."""
        ...
