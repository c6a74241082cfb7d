"""The spend monitor: each run, the exposure of every customer with a credit limit that this
worker rates, and the events it calls for (``rating/spend.py``). Run by the billing service
after the rater and the credit note desk.

Order, and what a crash after each step does:
1. publish what an earlier run stored but did not confirm       (steps 4-5 for those)
2. read the limits, what was announced, what is unpaid; price each customer's open
   periods now (reads only)                                      -> nothing written
3. decide the events (pure)                                      -> decided again next run,
   from the same history: the same ids
4. store them (published 0)                                      -> announced for good: the
   next run's history has them; published by step 1
5. publish on ``billing.credits`` keyed by customer, then mark published -> republished
   after a crash; consumers dedupe on the CloudEvents id

Entitlements read the stored reached/restored events (they poll ``spend_events``), so a
reached limit denies metered features from the moment it is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import structlog

from bastionary.outbound import cloud_event
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.publishing import Publish
from bastionary.rating.rater import PRICING_ERRORS, PreviewStore, Rater, upcoming_invoices
from bastionary.rating.spend import (
    CreditLimit,
    SpendEvent,
    SpendHistory,
    limit_lifted,
    plan_limits,
    spend_events,
)

log = structlog.get_logger(__name__)


class SpendStore(Protocol):
    def history(self) -> dict[tuple[str, str], SpendHistory]: ...

    def unpaid(self, customers: set[str]) -> dict[str, dict[str, Decimal]]: ...

    def store(self, events: list[SpendEvent], published: int = 0) -> None: ...

    def unpublished(self) -> list[SpendEvent]: ...


class SpendMonitor:
    def __init__(
        self,
        billing: PreviewStore,
        spend: SpendStore,
        rater: Rater,
        publish: Publish,
        owns: Callable[[str], bool] = lambda customer: True,
    ):
        self.billing = billing
        self.spend = spend
        self.rater = rater
        self.publish = publish
        self.owns = owns
        self._limited: set[str] = set()  # who had a limit at the last full run

    async def run_once(self, now: datetime | None = None, customers: Collection[str] | None = None) -> list[SpendEvent]:
        """Decide, store and publish; returns the events this run decided. ``customers``:
        only those (the ones a usage flush just touched); None: every limited customer."""
        now = now or datetime.now(UTC)
        if customers is not None and not self._limited.intersection(customers):
            return []  # a flush of customers without a limit (as of the last full run): no reads
        undelivered = [e for e in await asyncio.to_thread(self.spend.unpublished) if self.owns(e.customer_id)]
        terms: Mapping[str, CustomerTerms] = await asyncio.to_thread(self.billing.customer_terms)
        limited = {c: t.credit_limit for c, t in terms.items() if t.credit_limit is not None and self.owns(c)}
        if any(plan.credit_limit is not None for plan in self.rater.plans.values()):
            subscriptions = await asyncio.to_thread(self.billing.subscriptions, self.rater.plans)
            for customer, limit in plan_limits(subscriptions, now).items():
                if customer not in limited and self.owns(customer):
                    limited[customer] = limit
        if customers is None:
            self._limited = set(limited)
        else:
            limited = {c: limit for c, limit in limited.items() if c in customers}
        decided: list[SpendEvent] = []
        # A full run reads the history even with no limit left: a limit taken away while reached
        # must still be restored (``limit_lifted``).
        if limited or customers is None:
            decided = await asyncio.to_thread(self._decide, limited, now, customers)
            if decided:
                await asyncio.to_thread(self.spend.store, decided)
        if undelivered or decided:
            await self._deliver(undelivered + decided)
        return decided

    def _decide(
        self, limited: Mapping[str, CreditLimit], now: datetime, customers: Collection[str] | None = None
    ) -> list[SpendEvent]:
        history = self.spend.history()
        # Reached in a currency no limit of the customer's is in now: restored below.
        lifted = sorted(
            (customer, currency)
            for (customer, currency), before in history.items()
            if before.reached
            and self.owns(customer)
            and (customers is None or customer in customers)
            and (customer not in limited or limited[customer].currency != currency)
        )
        if not limited and not lifted:
            return []
        unpaid = self.spend.unpaid(set(limited) | {customer for customer, _ in lifted})
        out: list[SpendEvent] = []
        checks: list[tuple[str, str, CreditLimit | None]] = [
            (customer, limit.currency, limit) for customer, limit in sorted(limited.items())
        ]
        checks += [(customer, currency, None) for customer, currency in lifted]
        for customer, currency, limit in checks:
            try:
                previews = upcoming_invoices(self.billing, self.rater, customer, now)
            except PRICING_ERRORS:
                # As when rating: one customer's unpriceable usage leaves the others decided.
                log.exception("credit limit not checked: the exposure cannot be priced", customer_id=customer)
                continue
            running = sum((Decimal(d["total"]) for d in previews if d["currency"] == currency), Decimal(0))
            starts = [datetime.fromisoformat(d["period_start"]) for d in previews if d["currency"] == currency]
            owed = unpaid.get(customer, {}).get(currency, Decimal(0))
            before = history.get((customer, currency), SpendHistory())
            if limit is None:
                events = limit_lifted(customer, currency, owed, running, min(starts, default=None), before, now)
            else:
                events = spend_events(customer, limit, owed, running, min(starts, default=None), before, now)
            for event in events:
                log.info("credit limit event", customer_id=customer, kind=event.kind, exposure=event.data["exposure"])
            out.extend(events)
        return out

    async def _deliver(self, events: list[SpendEvent]) -> None:
        futures = []
        for event in events:
            value = cloud_event(
                event.event_type, event.event_id, "bastionary/rater", event.customer_id, event.data["at"], event.data
            )
            futures.append(await self.publish("credits", event.customer_id, value))
        await asyncio.gather(*futures)
        await asyncio.to_thread(self.spend.store, events, 1)
