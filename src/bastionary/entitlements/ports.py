"""What entitlements need from storage.

The ClickHouse implementation is :class:`bastionary.storage.entitlements.ClickHouseEntitlementStore`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Protocol

from bastionary.entitlements.changes import Change
from bastionary.entitlements.overrides import Override
from bastionary.metering.meters import Meter
from bastionary.rating.invoice import Subscription


class EntitlementStore(Protocol):
    def subscription(self, customer: str) -> Subscription | None: ...

    def overrides(self, customer: str) -> list[Override]: ...

    def usage(
        self, customer: str, meter: Meter, filters: dict[str, str], start: datetime, end: datetime
    ) -> Decimal: ...

    def suspension_history(self, customer: str) -> list[str]: ...

    def recorded_changes(self, customer: str) -> list[Change]: ...

    def store_changes(self, changes: list[Change], first_ordinal: int, published: int = 0) -> None: ...

    def mark_published(self, customer: str, changes: list[Change], first_ordinal: int) -> None: ...

    def unpublished_customers(self) -> set[str]: ...

    def unpublished(self, customer: str) -> list[tuple[Change, int]]: ...
