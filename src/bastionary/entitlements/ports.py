"""What entitlements need from storage.

The ClickHouse implementation is :class:`bastionary.storage.entitlements.ClickHouseEntitlementStore`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from bastionary.entitlements.changes import Change
from bastionary.entitlements.overrides import Override
from bastionary.metering.meters import Meter
from bastionary.rating.invoice import Subscription


class EntitlementStore(Protocol):
    """Reads take a batch of customers (one query each, whatever its size) and leave out
    customers with nothing to return."""

    def subscriptions(self, customers: Collection[str]) -> dict[str, list[Subscription]]:
        """Every subscription of each customer, whether in force or not."""
        ...

    def overrides(self, customers: Collection[str]) -> dict[str, list[Override]]: ...

    def usage(
        self, customers: Collection[str], meter: Meter, filters: dict[str, str], start: datetime, end: datetime
    ) -> dict[str, Decimal]: ...

    def suspension_histories(self, customers: Collection[str]) -> dict[str, list[str]]: ...

    def credit_limited(self, customers: Collection[str]) -> set[str]:
        """The customers whose credit limit is reached now (the last reached/restored event)."""
        ...

    def recorded_changes(self, customers: Collection[str]) -> dict[str, list[Change]]: ...

    def store_changes(self, changes: list[Change], first_ordinal: int, published: int = 0) -> None: ...

    def mark_published(self, customer: str, changes: list[Change], first_ordinal: int) -> None: ...

    def unpublished_customers(self) -> set[str]: ...

    def unpublished(self, customer: str) -> list[tuple[Change, int]]: ...
