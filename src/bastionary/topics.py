"""Topic names. Every name is prefixed with ``BASTIONARY_TOPIC_PREFIX``."""

from __future__ import annotations

from dataclasses import dataclass

USAGE_EVENTS = "usage.events"
USAGE_DLQ = "usage.dlq"
SUBSCRIPTIONS = "billing.subscriptions"
CREDIT_GRANTS = "billing.credit-grants"
CUSTOMERS = "billing.customers"
CREDIT_NOTES = "billing.credit-notes"
INVOICES = "billing.invoices"
CREDITS = "billing.credits"
BILLING_DLQ = "billing.dlq"
PAYMENTS = "billing.payments"
DUNNING_RESPONSES = "dunning.responses"
DUNNING_NOTICES = "dunning.notices"
DUNNING_DLQ = "dunning.dlq"
ENTITLEMENT_OVERRIDES = "entitlements.overrides"
ENTITLEMENT_CHANGES = "entitlements.changes"
# Every topic Bastionary reads or writes, before the prefix.
OWNED = (
    USAGE_EVENTS,
    USAGE_DLQ,
    SUBSCRIPTIONS,
    CREDIT_GRANTS,
    CUSTOMERS,
    CREDIT_NOTES,
    INVOICES,
    CREDITS,
    BILLING_DLQ,
    PAYMENTS,
    DUNNING_RESPONSES,
    DUNNING_NOTICES,
    DUNNING_DLQ,
    ENTITLEMENT_OVERRIDES,
    ENTITLEMENT_CHANGES,
)


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
    def customers(self) -> str:
        return self.name(CUSTOMERS)

    @property
    def credit_notes(self) -> str:
        return self.name(CREDIT_NOTES)

    @property
    def invoices(self) -> str:
        return self.name(INVOICES)

    @property
    def credits(self) -> str:
        return self.name(CREDITS)

    @property
    def billing_dlq(self) -> str:
        return self.name(BILLING_DLQ)

    @property
    def payments(self) -> str:
        return self.name(PAYMENTS)

    @property
    def dunning_responses(self) -> str:
        return self.name(DUNNING_RESPONSES)

    @property
    def dunning_notices(self) -> str:
        return self.name(DUNNING_NOTICES)

    @property
    def dunning_dlq(self) -> str:
        return self.name(DUNNING_DLQ)

    @property
    def entitlement_overrides(self) -> str:
        return self.name(ENTITLEMENT_OVERRIDES)

    @property
    def entitlement_changes(self) -> str:
        return self.name(ENTITLEMENT_CHANGES)

    def all(self) -> list[str]:
        return [
            self.usage_events,
            self.usage_dlq,
            self.subscriptions,
            self.credit_grants,
            self.customers,
            self.credit_notes,
            self.invoices,
            self.credits,
            self.billing_dlq,
            self.payments,
            self.dunning_responses,
            self.dunning_notices,
            self.dunning_dlq,
            self.entitlement_overrides,
            self.entitlement_changes,
        ]
