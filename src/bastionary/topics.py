"""Topic names. Every name is prefixed with ``BASTIONARY_TOPIC_PREFIX``."""

from __future__ import annotations

from dataclasses import dataclass

USAGE_EVENTS = "usage.events"
USAGE_DLQ = "usage.dlq"
SUBSCRIPTIONS = "billing.subscriptions"
CREDIT_GRANTS = "billing.credit-grants"
INVOICES = "billing.invoices"
CREDITS = "billing.credits"
BILLING_DLQ = "billing.dlq"


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def usage_events(self) -> str:
        return self.name(USAGE_EVENTS)

    @property
    def usage_dlq(self) -> str:
        return self.name(USAGE_DLQ)

    @property
    def subscriptions(self) -> str:
        return self.name(SUBSCRIPTIONS)

    @property
    def credit_grants(self) -> str:
        return self.name(CREDIT_GRANTS)

    @property
    def invoices(self) -> str:
        return self.name(INVOICES)

    @property
    def credits(self) -> str:
        return self.name(CREDITS)

    @property
    def billing_dlq(self) -> str:
        return self.name(BILLING_DLQ)

    def all(self) -> list[str]:
        return [self.usage_events, self.usage_dlq, self.subscriptions, self.credit_grants, self.invoices,
                self.credits, self.billing_dlq]
