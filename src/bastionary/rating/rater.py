"""The rater: finds closed periods, prices them, stores and then publishes the invoices.

Order per batch of invoices, and what a crash right after each step does:
1. compute (pure; usage read as of each period's cutoff)           -> nothing written: rated again
2. store lines and credit movements, then the invoices (published=0) -> the invoice row is the
   commit marker: lines and movements count (``billed``, what grants have drawn) only once
   their invoice's row exists, so a crash inside the store leaves nothing that counts and the
   period is rated again, identically, onto the same keys (the crash points are listed at
   ``ClickHouseBillingStore.store_invoices``). A stored document is republished as is on the
   next run: it is never recomputed, so never different
3. publish invoice.finalized and credit.applied/.expired           -> republished next run;
   consumers dedupe on invoice_id and the movement ids (the content is identical). An invoice
   the broker refuses for good (``PublishRefused``: larger than it takes) stays unpublished,
   offered again at every run, and the others are published: one customer's invoice must not
   stop every customer's
4. mark published=1                                                -> done

Credit events are announced only from a stored invoice document (its ``credit_allocations``
and ``credits_expired``), in the grant's currency: a movement whose invoice was never stored
is never announced, and one that was is announced with it until it is marked published.

The result does not depend on the batch size: a subscription's periods are rated in order,
and a later period adjusts against what the earlier ones billed, whether those are already
stored or only rated earlier in the same batch (``pending``, below).

A customer is rated by one rater at a time: the worker owning the customer's partition
(``owns``), so two raters never draw on the same credit grants concurrently. A second rater
that does rate the same period anyway (a zombie) computes the same invoice id and lands on
the same ReplacingMergeTree key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import orjson
import structlog

from bastionary.credits.balances import grant_status
from bastionary.credits.ledger import Grant, movement_id, usable_balance
from bastionary.metering.meters import Meter
from bastionary.money import MINOR_UNITS, format_money, minor_unit, round_money
from bastionary.outbound import cloud_event
from bastionary.rating.adjustments import (
    adjustment_lines,
    already_billed_lines,
    removed_period_refunds,
    replanned,
    true_up_adjustments,
    usage_keys,
)
from bastionary.rating.advance import advance_keys, advance_lines
from bastionary.rating.billed import NOTHING_BILLED, Billed, add_billed, combined
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.events import fraction_digits
from bastionary.rating.invoice import (
    ADVANCE,
    Line,
    Period,
    Subscription,
    UsageLookup,
    finalize,
    invoice_id,
    minimum_true_up,
    overlap,
    period_lines,
)
from bastionary.rating.plans import MeteredPrice, Plan
from bastionary.rating.ports import BillingStore, RatedInvoice
from bastionary.rating.pricing import Usage
from bastionary.rating.publishing import Publish, PublishRefused, publish_each
from bastionary.rating.rows import LedgerRow
from bastionary.rating.schedule import (
    FINAL_ADJUSTMENT,
    PROGRESSIVE,
    advance_due,
    billable,
    closed_periods,
    final_adjustment,
    first_index,
    last_cutoff,
    nth_period,
    open_period,
    progressive_id,
    progressive_key,
    unbilled_before,
    upcoming_period,
)
from bastionary.rating.tax import Invoicing, TaxRate, rates_for

log = structlog.get_logger(__name__)
CARRIED_PRIORITY = 2**31 - 1  # a carried balance is drawn after every grant (credit_ledger.priority is Int32)
EMPTY = "empty"  # the status of an invoice with nothing to bill: stored, never published

# (topic role, key, CloudEvent JSON) -> awaiting it enqueues and returns the delivery future
# (meter, filter items, start, end, as of) -> usage per customer: one query serves every customer
UsageCache = dict[tuple[str, tuple[tuple[str, str], ...], datetime, datetime, datetime], dict[str, Usage]]


class PreviewStore(Protocol):
    """What :func:`upcoming_invoices` reads, for one customer."""

    def subscriptions(self, plans: Mapping[str, Plan], customer: str | None = None) -> list[Subscription]: ...

    def invoice_ids(self, subscription_id: str | None = None) -> set[str]: ...

    def grants_as_of(
        self, moment: datetime | None, customer: str | None = None
    ) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]: ...

    def customer_terms(self, customer: str | None = None) -> Mapping[str, CustomerTerms]: ...


def upcoming_invoices(store: PreviewStore, rater: Rater, customer_id: str, now: datetime) -> list[dict[str, Any]]:
    """The customer's running charge: each subscription's next invoice priced now
    (:meth:`Rater.preview`), from one customer's reads. Blocking."""
    due = []
    invoiced: dict[str, set[datetime]] = {}
    for sub in store.subscriptions(rater.plans, customer=customer_id):
        unbilled = unbilled_before(sub, rater.backfill)
        rated = store.invoice_ids(sub.subscription_id)
        found = upcoming_period(sub, now, rater.grace, rated, unbilled)
        if found is not None:
            earlier, period, cutoff = found
            due.append((sub, earlier, period, cutoff))
            invoiced[sub.subscription_id] = {
                p.start for p in earlier if invoice_id(sub.subscription_id, p.start) in rated
            }
    if not due:
        return []
    grants, drawn = store.grants_as_of(None, customer=customer_id)
    terms = store.customer_terms(customer_id)
    return rater.preview(due, grants.get(customer_id, []), drawn, terms.get(customer_id), invoiced)


class _Due(NamedTuple):
    """A closed period not rated yet; rated in (period end, subscription id, kind) order."""

    # A final adjustment's: its last period's cutoff, which its own cutoff follows by the grace
    # as a period's cutoff follows its end.
    period_end: datetime
    subscription_id: str
    sub: Subscription
    # The subscription's periods before this one (a final adjustment's: all those rated, none
    # when a backfill skipped them all; an advance invoice's: its own period if that period
    # was invoiced already, else none).
    earlier: list[Period]
    period: Period  # a final adjustment's: the subscription's last period
    cutoff: datetime  # an advance invoice's: the segment start; a progressive one's: its usage cutoff
    kind: str = "period"
    threshold: Decimal | None = None  # a progressive invoice's: the highest usage threshold it answers

    @property
    def order(self) -> tuple[datetime, str, bool]:
        return (self.period_end, self.subscription_id, self.kind == FINAL_ADJUSTMENT)


@dataclass(frozen=True)
class RatingFailure:
    """An invoice that could not be priced (an amount past what Decimal can hold at the
    currency's precision, say): its customer's invoices wait, the others are rated."""

    customer_id: str
    subscription_id: str
    kind: str
    period_start: datetime
    error: str


# What one customer's data can raise while it is priced. Anything else (the store, the
# broker) fails the whole run, which is retried on the next tick.
PRICING_ERRORS = (ArithmeticError, ValueError)


@dataclass(frozen=True)
class PublishFailure:
    """A stored invoice the broker refused: it stays stored unpublished and is offered again at
    every run (taken once the broker's limits allow it), while the others are published."""

    customer_id: str
    invoice_id: str
    kind: str
    period_start: str
    error: str


@dataclass
class RatingResult:
    invoices: list[dict[str, Any]]
    republished: int = 0
    oldest_due: datetime | None = None  # the earliest moment an invoice rated this run was due at
    failed: list[RatingFailure] = field(default_factory=list)  # rated again next run, and failing again
    refused: list[PublishFailure] = field(default_factory=list)  # stored, offered again next run


class Rater:
    def __init__(
        self,
        store: BillingStore,
        plans: Sequence[Plan],
        meters: Sequence[Meter],
        grace: timedelta,
        publish: Publish,
        owns: Callable[[str], bool] = lambda customer: True,
        settle: timedelta = timedelta(seconds=5),
        batch_size: int = 2000,
        invoicing: Invoicing | None = None,
        backfill: bool = False,
        landed_through: Callable[[], Awaitable[datetime | None]] | None = None,
    ):
        self.invoicing = invoicing or Invoicing()
        self.backfill = backfill  # rate every subscription's periods from before it was received
        self._told: set[str] = set()  # subscriptions whose backfill was logged
        self.batch_size = batch_size
        self.store = store
        self.plans = {p.key: p for p in plans}
        self.grace = grace
        self.publish = publish
        self.owns = owns
        self.settle = settle  # past a cutoff, for a record the producer stamped before it to reach the broker
        # The moment through which the usage pipeline has landed what the broker took (None:
        # not known yet); a run rates as of it, not of the clock. Without it (previews, tests
        # with no pipeline) a run trusts that what came before ``now - settle`` has landed.
        self.landed_through = landed_through
        self._meters = {m.key: m for m in meters}
        self._customers: Mapping[str, CustomerTerms] = {}  # read with the grants, once per run that rates
        self._thresholds_checked: datetime | None = None  # the usage cutoff progressive billing last checked

    async def run_once(self, now: datetime | None = None) -> RatingResult:
        now = now or datetime.now(UTC)
        result = RatingResult([])
        await self._republish(result)
        if self.landed_through is not None:
            landed = await self.landed_through()
            if landed is None:
                return result
            # A cutoff whose usage has not all landed waits: a final adjustment rated before
            # it would never bill what lands later, and a period's invoice would leave it to
            # the next one as late usage.
            now = min(now, landed)
        rated = await asyncio.to_thread(self.store.invoice_ids)
        subscriptions = await asyncio.to_thread(self.store.subscriptions, self.plans)
        due: list[_Due] = []
        told: dict[str, list[str]] = {"skipped": [], "rated": []}  # backfills seen this run
        for sub in subscriptions:
            if not self.owns(sub.customer_id):
                continue
            unbilled = unbilled_before(sub, self.backfill)
            every = closed_periods(sub, now - self.settle, self.grace)
            periods = [(period, cutoff) for period, cutoff in every if billable(period, unbilled)]
            said = self._backfill_kind(sub, unbilled, len(every) - len(periods))
            if said is not None:
                told[said].append(sub.subscription_id)
            for k, (period, cutoff) in enumerate(periods):
                if invoice_id(sub.subscription_id, period.start) not in rated:
                    earlier = [p for p, _ in periods[:k]]
                    due.append(_Due(period.end, sub.subscription_id, sub, earlier, period, cutoff))
            final = final_adjustment(sub, now - self.settle, self.grace)
            # The final adjustment is an ended subscription's last bill: once it is rated, a
            # plan change received since bills no fee in advance either.
            ended = final is not None and invoice_id(sub.subscription_id, final[0][-1].start, FINAL_ADJUSTMENT) in rated
            if final is not None and not ended:
                # What was billed can only move the final cutoff later: read once the cutoff
                # from the last period's end has passed, until the final adjustment is rated.
                billed = await asyncio.to_thread(self.store.billed, sub.subscription_id)
                until = _billed_until(sub, final[0][-1], billed, rated, self.plans)
                final = final_adjustment(sub, now - self.settle, self.grace, until)
                if final is not None:
                    ended_periods, cutoff = final
                    last = ended_periods[-1]
                    # A cancellation effective in periods a backfill skipped leaves none to
                    # adjust, but what was billed for the periods it removed is still owed back:
                    # the invoice is then the last period's, holding only those refunds.
                    adjusted = [p for p in ended_periods if billable(p, unbilled)]
                    due.append(
                        _Due(
                            last_cutoff(last, self.grace, until),
                            sub.subscription_id,
                            sub,
                            adjusted,
                            last,
                            cutoff,
                            FINAL_ADJUSTMENT,
                        )
                    )
            for period, start in [] if ended else advance_due(sub, now - self.settle):
                if billable(period, unbilled) and invoice_id(sub.subscription_id, start, ADVANCE) not in rated:
                    # A backdated plan change's fee for a period already invoiced: that period's
                    # minimum true-up is recomputed on this invoice. A period not invoiced yet
                    # counts the fee when it is (its invoice is ordered after this one).
                    invoiced = [period] if invoice_id(sub.subscription_id, period.start) in rated else []
                    due.append(_Due(start, sub.subscription_id, sub, invoiced, period, start, ADVANCE))
        self._tell_backfill(told)
        cache: UsageCache = {}
        checked = self._thresholds_checked
        due.extend(await asyncio.to_thread(self._progressive_due, subscriptions, rated, now, cache, result.failed))
        try:
            return await self._rate_due(due, subscriptions, rated, now, cache, result)
        except BaseException:
            # The crossings this run found may not be invoiced: the next run looks again, in this
            # minute too (one found in a period's last minute was otherwise never billed early).
            self._thresholds_checked = checked
            raise

    async def _rate_due(
        self,
        due: list[_Due],
        subscriptions: list[Subscription],
        rated: set[str],
        now: datetime,
        cache: UsageCache,
        result: RatingResult,
    ) -> RatingResult:
        """Rate, store and publish ``due``, batch by batch, into ``result``."""
        if not due:
            return result
        grants, drawn = await asyncio.to_thread(self.store.grants)
        due = self._in_credit_order(due, subscriptions, rated, now, grants, drawn)
        if not due:
            return result
        self._customers = await asyncio.to_thread(self.store.customer_terms)
        currencies = _grant_currencies(grants)
        due.sort(key=lambda d: d.order)
        result.oldest_due = min(d.cutoff for d in due) + self.settle
        stopped: set[str] = set()  # customers with an invoice that could not be priced this run
        for offset in range(0, len(due), self.batch_size):
            batch = due[offset : offset + self.batch_size]
            rated_batch = await asyncio.to_thread(self._rate_batch, batch, grants, drawn, cache, result.failed, stopped)
            documents = [(r.invoice.document(), r.cutoff) for r in rated_batch]
            delivered = await self._deliver(documents, currencies, result.refused)
            await asyncio.to_thread(self.store.mark_published, delivered)
            result.invoices.extend(document for document, _ in delivered)
        return result

    async def _republish(self, result: RatingResult) -> None:
        """Publish what an earlier run stored but did not publish, a batch at a time as rating
        does: after an outage that left thousands stored, one round trip each held the run."""
        stored = [
            data
            for data in map(orjson.loads, await asyncio.to_thread(self.store.unpublished_documents))
            if self.owns(data["customer_id"])
        ]
        currencies: Mapping[str, str] = {}  # grant id -> currency, read only if a credit event needs it
        if any(data.get("credit_allocations") or data.get("credits_expired") for data in stored):
            currencies = _grant_currencies((await asyncio.to_thread(self.store.grants))[0])
        for offset in range(0, len(stored), self.batch_size):
            batch = [
                (data, datetime.fromisoformat(data["issued_at"])) for data in stored[offset : offset + self.batch_size]
            ]
            delivered = await self._deliver(batch, currencies, result.refused)
            if delivered:
                await asyncio.to_thread(self.store.mark_published, delivered)
            result.republished += len(delivered)

    async def _deliver(
        self,
        documents: list[tuple[dict[str, Any], datetime]],
        currencies: Mapping[str, str],
        refused: list[PublishFailure],
    ) -> list[tuple[dict[str, Any], datetime]]:
        """Publish ``documents`` and return those delivered (:func:`publish_each`): one the
        broker refuses for good goes to ``refused`` and stays unpublished; any other failure
        fails the run, and the next one republishes what was stored."""

        async def enqueue(dated: tuple[dict[str, Any], datetime]) -> Awaitable[object]:
            return asyncio.gather(*await self._send(dated[0], currencies))

        return await publish_each(
            documents, enqueue, lambda dated, exc: refused.append(_publish_failure(dated[0], exc))
        )

    def _backfill_kind(self, sub: Subscription, unbilled: datetime | None, skipped: int) -> str | None:
        """ "skipped" when the subscription's past periods are left unrated, "rated" when a
        backfill rates them; None otherwise, or once said for this subscription (per process)."""
        if sub.subscription_id in self._told or sub.received_at is None:
            return None
        first = nth_period(sub, first_index(sub))
        backfill = unbilled is None and first is not None and first.end <= sub.received_at
        if not (skipped or backfill):
            return None
        self._told.add(sub.subscription_id)
        return "skipped" if skipped else "rated"

    @staticmethod
    def _tell_backfill(told: dict[str, list[str]]) -> None:
        """One log line per run and kind, naming a few subscriptions: a bulk load of thousands
        says so once."""
        said = {
            "skipped": (
                "subscriptions received after periods of theirs had ended: those periods are not rated",
                {"to_rate_them": "backfill: true on the created event, or BASTIONARY_RATING_BACKFILL=true"},
            ),
            "rated": (
                "rating a backfill: periods that ended before their subscription was received",
                {"dunning": "leaves their invoices alone unless BASTIONARY_DUNNING_BACKFILL=true"},
            ),
        }
        for kind, (message, advice) in said.items():
            if told[kind]:
                log.warning(message, subscriptions=len(told[kind]), first=told[kind][:5], **advice)

    def _in_credit_order(
        self,
        due: list[_Due],
        subscriptions: list[Subscription],
        rated: set[str],
        now: datetime,
        grants: Mapping[str, list[Grant]],
        drawn: Mapping[str, Decimal],
    ) -> list[_Due]:
        """``due`` less the advance and progressive invoices left to a later run: those that
        draw credits at a moment (their cutoff) after the end of a period of the same customer
        whose invoice still waits for its grace, when a grant of the customer with balance left
        expires in between. That invoice draws at its period's end, when the grant was usable;
        rated after them, it would find the grant lapsed by them, and charge in cash what the
        credit pays. They wait at most the grace, then sort after it (``_Due.order``). Without
        such a grant nothing waits: both draw on the same credit, in the order they are rated."""
        early = [item for item in due if item.kind in (ADVANCE, PROGRESSIVE)]
        if not early:
            return due
        customers = {item.sub.customer_id for item in early}
        rating = {(item.subscription_id, item.period.start) for item in due if item.kind == "period"}
        waiting: dict[str, datetime] = {}  # customer -> the earliest end of a period whose invoice waits
        for sub in subscriptions:
            if sub.customer_id not in customers:
                continue
            unbilled = unbilled_before(sub, self.backfill)
            # Grace 0 (rounded up to a minute): every period that has ended by now.
            for period, _ in closed_periods(sub, now + timedelta(minutes=1), timedelta(0)):
                if (
                    billable(period, unbilled)
                    and invoice_id(sub.subscription_id, period.start) not in rated
                    and (sub.subscription_id, period.start) not in rating
                ):
                    end = waiting.get(sub.customer_id, period.end)
                    waiting[sub.customer_id] = min(end, period.end)
                    break

        def lapses_in_between(item: _Due) -> bool:
            end = waiting.get(item.sub.customer_id)
            return end is not None and any(
                grant.expires_at is not None
                and end < grant.expires_at <= item.cutoff
                and grant.amount > drawn.get(grant.grant_id, Decimal(0))
                for grant in grants.get(item.sub.customer_id, ())
            )

        return [item for item in due if item.kind not in (ADVANCE, PROGRESSIVE) or not lapses_in_between(item)]

    def _progressive_due(
        self,
        subscriptions: list[Subscription],
        rated: set[str],
        now: datetime,
        cache: UsageCache,
        failed: list[RatingFailure],
    ) -> list[_Due]:
        """Open periods whose usage charges (before tax and credits, whole period so far)
        reached a usage threshold of their plan that no progressive invoice has answered yet.
        Checked once per usage minute: usage is read as of whole ingest minutes, so a second
        check within the minute would read the same."""
        as_of = (now - self.settle).replace(second=0, microsecond=0)
        if as_of == self._thresholds_checked:
            return []
        usage = self._usage_lookup(cache)
        due = []
        for sub in subscriptions:
            if not self.owns(sub.customer_id) or not any(s.plan.usage_thresholds for s in sub.segments):
                continue
            period = open_period(sub, as_of)
            thresholds = sub.plan_at(as_of).usage_thresholds
            if period is None or not thresholds or as_of <= period.start:
                continue
            currency = sub.plan_at(period.start).currency
            try:
                charge = sum(
                    (
                        round_money(line.amount, currency)
                        for line in period_lines(sub, period, as_of, usage)
                        if line.meter
                    ),
                    Decimal(0),
                )
            except PRICING_ERRORS as exc:
                failed.append(RatingFailure(sub.customer_id, sub.subscription_id, PROGRESSIVE, period.start, repr(exc)))
                continue
            crossed = [t for t in thresholds if t <= charge]
            answered = [t for t in thresholds if progressive_id(sub, period, t) in rated]
            if crossed and not (answered and max(answered) >= crossed[-1]):
                due.append(_Due(as_of, sub.subscription_id, sub, [], period, as_of, PROGRESSIVE, threshold=crossed[-1]))
        self._thresholds_checked = as_of
        return due

    def preview(
        self,
        due: list[tuple[Subscription, list[Period], Period, datetime]],
        grants: list[Grant],
        drawn: dict[str, Decimal],
        terms: CustomerTerms | None = None,
        invoiced: Mapping[str, Collection[datetime]] | None = None,
    ) -> list[dict[str, Any]]:
        """The next invoice of each of one customer's subscriptions, priced now with the code
        that will issue it: usage landed so far, credits and the customer's record (``terms``)
        as they stand. Nothing is written. ``invoiced``: per subscription, the starts of its
        earlier periods already invoiced (None: all of them); one not invoiced yet, its own
        invoice due, is not taken for a period to rate again (:func:`replanned`).

        Each document is the one the rater would issue if no more usage arrived (same id,
        lines, credits and totals), with ``status: "preview"``."""
        drawn = dict(drawn)  # the previews draw on a copy: nothing is applied yet
        cache: UsageCache = {}  # one customer's reads, shared by its subscriptions
        out = []
        for sub, earlier, period, cutoff in sorted(due, key=lambda d: (d[2].end, d[0].subscription_id)):
            rated = self._rate(
                sub,
                earlier,
                period,
                cutoff,
                grants,
                drawn,
                cache,
                {},
                only=sub.customer_id,
                terms=terms or CustomerTerms(),
                invoiced=None if invoiced is None else invoiced.get(sub.subscription_id, ()),
            )
            out.append(replace(rated.invoice, status="preview").document())
        return out

    def _rate_batch(
        self,
        batch: list[_Due],
        grants: dict[str, list[Grant]],
        drawn: dict[str, Decimal],
        cache: UsageCache,
        failed: list[RatingFailure],
        stopped: set[str],
    ) -> list[RatedInvoice]:
        # What this batch has rated per subscription, as the store will keep it once stored: a
        # later period of the same subscription in this batch adjusts against it (the store's
        # ``billed`` cannot have it yet). Earlier batches are stored before this one is rated.
        pending: dict[str, Billed] = {}
        pending_rates: dict[str, dict[datetime, list[TaxRate]]] = {}  # as ``pending``, for rates_then
        pending_origins: dict[str, dict[tuple[datetime, str], list[TaxRate]]] = {}  # for rates_first_billed
        # A customer whose invoice cannot be priced gets none of its later invoices this run
        # either (they draw its credits in order); what it drew in memory before failing is
        # never stored, and its grants and pending rows are its own: no other customer sees them.
        rated = []
        for item in batch:
            if item.sub.customer_id in stopped:
                continue
            try:
                rated.append(
                    self._rate(
                        item.sub,
                        item.earlier,
                        item.period,
                        item.cutoff,
                        grants.setdefault(item.sub.customer_id, []),  # a carried balance joins them for later periods
                        drawn,
                        cache,
                        pending.setdefault(item.subscription_id, {}),
                        item.kind,
                        threshold=item.threshold,
                        pending_rates=pending_rates.setdefault(item.subscription_id, {}),
                        pending_origins=pending_origins.setdefault(item.subscription_id, {}),
                    )
                )
            except PRICING_ERRORS as exc:
                stopped.add(item.sub.customer_id)
                failed.append(
                    RatingFailure(item.sub.customer_id, item.subscription_id, item.kind, item.period.start, repr(exc))
                )
        self.store.store_invoices(rated)
        return rated

    def _rate(
        self,
        sub: Subscription,
        earlier: list[Period],
        period: Period,
        cutoff: datetime,
        grants: list[Grant],
        drawn: dict[str, Decimal],
        cache: UsageCache,
        pending: Billed,
        kind: str = "period",
        only: str | None = None,
        threshold: Decimal | None = None,
        terms: CustomerTerms | None = None,
        pending_rates: dict[datetime, list[TaxRate]] | None = None,
        pending_origins: dict[tuple[datetime, str], list[TaxRate]] | None = None,
        invoiced: Collection[datetime] | None = None,
    ) -> RatedInvoice:
        """One period's invoice, lines and ledger movements; nothing is written here.

        ``pending`` is what earlier periods of the subscription billed in invoices rated but
        not stored yet; this period's lines are added to it. A final adjustment (``kind``)
        has only the adjustment lines of ``earlier``, every period of the subscription.
        """
        usage = self._usage_lookup(cache, only)
        plan = sub.plan_at(period.start)
        billed = self._billed(sub, pending, needed=bool(earlier) or kind != "period")
        lines = self._lines(sub, earlier, period, cutoff, kind, usage, billed, invoiced)
        # What the invoice shows as its period, and the moment its credits are drawn and
        # expire at: the period's end, except for an advance invoice (issued at a plan
        # segment's start, for the rest of its period) and a progressive one (the period so far).
        shown = period
        if kind == ADVANCE:
            shown = Period(period.index, cutoff, period.end, period.full_end)
        elif kind == PROGRESSIVE:
            shown = Period(period.index, period.start, cutoff, period.full_end)
        moment = cutoff if kind in (ADVANCE, PROGRESSIVE) else period.end
        add_billed(pending, lines, shown.start, plan.currency)
        # A preview passes the customer's record; a rating run reads every record once.
        terms = terms or self._customers.get(sub.customer_id, CustomerTerms())
        rates = rates_for(self.invoicing.taxes, terms.tax)
        # The plan in force at the period's end names the invoice (and picks its dunning policy
        # and payment terms); ``plans`` lists every plan the period saw, in order.
        at_end = sub.plan_at(max(shown.start, shown.end - timedelta(microseconds=1)))
        id_key = progressive_key(threshold) if threshold is not None else None
        invoice, allocations = finalize(
            sub,
            at_end,
            shown,
            lines,
            cutoff,
            grants,
            drawn,
            kind,
            rates,
            id_key=id_key,
            credits_at=moment,
            line_rates=(line_rates := self._line_rates(sub, lines, billed, rates, pending_rates, pending_origins)),
        )
        if kind == "period" and pending_rates is not None:
            pending_rates[period.start] = rates
        if pending_origins is not None:
            for n, line in enumerate(lines):
                if line.timing == ADVANCE and line.period_start is not None and line.amount > 0:
                    origin = (line.period_start, line.line_key)
                    pending_origins.setdefault(origin, line_rates[n] if line_rates else rates)
        seen = [s.plan.key for s in sub.segments if overlap(s, shown.start, shown.end)] or [at_end.key]
        invoice = replace(
            invoice,
            issuer=self.invoicing.issuer.model_dump(),
            bill_to=terms.bill_to,
            plans=tuple(dict.fromkeys(seen)),
            backfill=sub.received_at is not None and shown.end <= sub.received_at,
        )
        # What the customer's invoices left usable, this invoice's expiries still in it: the
        # balance at ``moment`` already leaves out a grant expired by then, and an expiry that
        # takes the balance below a top-up threshold asks as a draw does (README, "Auto top-up").
        balance_before = usable_balance(grants, drawn, plan.currency, moment) + sum(
            (_lapsing(grant, drawn, moment) for grant in grants if grant.currency == plan.currency), Decimal(0)
        )
        recorded = datetime.now(UTC)
        ledger = []
        for allocation in allocations:
            drawn[allocation.grant_id] = drawn.get(allocation.grant_id, Decimal(0)) + allocation.amount
            grant = next(g for g in grants if g.grant_id == allocation.grant_id)
            ledger.append(_ledger_row("applied", grant, allocation.amount, invoice.invoice_id, recorded))
        expired = []
        for grant in grants:
            left = grant.amount - drawn.get(grant.grant_id, Decimal(0))
            # Expired by the period end, and not voided by then: a void wins over an expiry
            # (``grant_status``), and a voided grant's balance is gone, not lapsed.
            # A usable remainder below one minor unit can never be drawn (draws are whole minor
            # units): it lapses here, explicitly, instead of lingering as an unusable balance.
            # (Inputs carry at most the currency's decimals, so only older data can hold one.)
            dust = grant.usable_at(moment, plan.currency) and 0 < left < minor_unit(plan.currency)
            if _lapsing(grant, drawn, moment) or dust:
                drawn[grant.grant_id] = grant.amount
                ledger.append(_ledger_row("expired", grant, left, invoice.invoice_id, recorded))
                # With its currency: a grant in another currency than the invoice's lapses too,
                # and its amount alone did not say in what.
                lapsed = _lapsed_amount(left, grant.currency)
                expired.append({"grant_id": grant.grant_id, "amount": lapsed, "currency": grant.currency})
        invoice = replace(invoice, credits_expired=tuple(expired))
        carried = Decimal(invoice.carried_forward)
        if carried > 0:
            # The customer's balance: a grant the next invoices draw on after every other
            # (carried funding, priority last), never expiring; it counts once this invoice
            # is stored.
            credit = Grant(
                movement_id("carried", invoice.invoice_id),
                sub.customer_id,
                carried,
                plan.currency,
                CARRIED_PRIORITY,
                moment,
                funding="carried",
            )
            grants.append(credit)
            ledger.append(_ledger_row("carried", credit, carried, invoice.invoice_id, recorded))
        rule = terms.topups.get(plan.currency)
        if rule is not None:
            balance = usable_balance(grants, drawn, plan.currency, moment)
            threshold, amount = rule
            # Once per crossing: only the invoice whose draws take the balance from at or
            # above the threshold to below it asks; the request's id derives from the invoice.
            if balance_before >= threshold > balance:
                money = {"threshold": threshold, "amount": amount, "balance": balance}
                request = {
                    "currency": plan.currency,
                    **{k: format_money(v, plan.currency) for k, v in money.items()},
                }
                invoice = replace(invoice, topup_requested=(request,))
        if kind in (FINAL_ADJUSTMENT, ADVANCE) and not ledger and _bills_nothing(lines, plan.currency):
            # No late usage, no fee owed in advance: nothing to tell the customer. Stored (so it
            # is not rated again) but never published; the reports leave it out. Its lines may
            # still move service spans (a free plan's, cut by a cancellation): they are stored,
            # and ``billed`` reads them whatever the status, for later adjustments to net against.
            invoice = replace(invoice, status=EMPTY)
        log.debug("invoice rated", invoice_id=invoice.invoice_id, customer_id=sub.customer_id, total=invoice.total)
        return RatedInvoice(invoice, cutoff, lines, ledger)

    def _billed(self, sub: Subscription, pending: Billed, needed: bool) -> Billed:
        """What invoices billed per (period, line key): the stored (committed) ones, plus
        ``pending``. Read only when the invoice can depend on it: it has earlier periods to
        adjust, bills fees in advance, or follows a progressive invoice. Any plan of the
        catalog that bills in advance counts: a backdated change may have replaced one from
        the subscription's start, and its fee for the first period is given back on that
        period's invoice (advance_lines)."""
        plans = [s.plan for s in sub.segments]
        if not (
            needed
            or any(p.advance_prices or p.usage_thresholds for p in plans)
            or any(p.advance_prices for p in self.plans.values())
        ):
            return {}
        billed = dict(self.store.billed(sub.subscription_id))
        for key, more in pending.items():
            billed[key] = combined(billed.get(key, NOTHING_BILLED), more)
        return billed

    def _line_rates(
        self,
        sub: Subscription,
        lines: list[Line],
        billed: Billed,
        own: list[TaxRate],
        pending_rates: dict[datetime, list[TaxRate]] | None,
        pending_origins: dict[tuple[datetime, str], list[TaxRate]] | None = None,
    ) -> list[list[TaxRate]] | None:
        """Per line, the rates it is taxed at (None: all at ``own``, today's).

        A line that adjusts what an invoice billed is taxed at that invoice's rates, stored or
        rated earlier in this batch (:meth:`BillingStore.rates_then`): a period's own lines
        were billed on its period invoice; a fee in advance billed before, on the first invoice
        that billed it (:meth:`BillingStore.rates_first_billed`: the invoice of the period before
        the one it pays for, or an ``advance`` invoice of a plan change or a first period); if
        that is not known, on the invoice of the period before (with none, a backfill having
        skipped it, on the period's own). A fee in advance billed for the first time, and a line
        whose invoice is not known, are taxed at today's rates."""
        interval = sub.first_plan.interval
        starts: list[tuple[datetime, ...]] = []  # where to look, in order
        origins: list[tuple[datetime, str] | None] = []  # a fee in advance billed before: its (period, key)
        for line in lines:
            start = line.period_start
            origins.append(None)
            if start is None:
                starts.append(())
            elif line.timing != ADVANCE:
                starts.append((start,))
            elif not any(billed.get((start, line.line_key), NOTHING_BILLED)[:2]):
                starts.append(())  # billed now, for the first time
            else:
                origins[-1] = (start, line.line_key)
                before = interval.period_containing(sub.anchor, start - timedelta(microseconds=1))[1]
                starts.append((before, start))
        if not any(starts):
            return None
        known = dict(self.store.rates_then(sub.customer_id, sub.subscription_id))
        known.update(pending_rates or {})
        first_billed: dict[tuple[datetime, str], list[TaxRate]] = {}
        if any(origins):
            # Stored invoices were issued before any of this batch's: theirs come first.
            first_billed = {
                **(pending_origins or {}),
                **self.store.rates_first_billed(sub.customer_id, sub.subscription_id),
            }
        return [
            first_billed[origin]
            if origin is not None and origin in first_billed
            else next((known[s] for s in where if s in known), own)
            for origin, where in zip(origins, starts, strict=True)
        ]

    def _lines(
        self,
        sub: Subscription,
        earlier: list[Period],
        period: Period,
        cutoff: datetime,
        kind: str,
        usage: UsageLookup,
        billed: Billed,
        invoiced: Collection[datetime] | None = None,
    ) -> list[Line]:
        """The invoice's lines, by kind (``invoiced``: see :meth:`preview`):
        - period: the period's fees in arrears and usage, the minimum commitment's true-up,
          less what progressive invoices billed of the period's usage; the period's fees in
          advance trued up, and the next period's billed; late usage of earlier periods.
        - advance: the fees in advance of the period the plan segment starts in, less what was
          billed of them (a plan change's difference; a new subscription's first fee, prorated).
        - progressive: the period's usage as of the cutoff, less what earlier progressive
          invoices billed.
        - final adjustment: late usage of every period, advance fees trued up, and those
          everything billed for periods a backdated cancellation removed, credited.
        Each earlier period adjusted has its minimum commitment's true-up recomputed, and so has
        a final adjustment's last period (the one its cancellation cuts)."""
        currency = sub.plan_at(period.start).currency
        catalog = list(self.plans.values())  # plans a backdated change took off every segment billed too
        if kind == ADVANCE:
            advance = advance_lines(sub, period, billed, currency, catalog)
            return advance + true_up_adjustments(sub, earlier, advance, billed, currency, invoiced=invoiced)
        if kind == PROGRESSIVE:
            usage_lines = [line for line in period_lines(sub, period, cutoff, usage) if line.meter]
            return usage_lines + already_billed_lines(
                usage_lines, billed, period.start, usage_keys(sub, self.plans.values())
            )
        lines: list[Line] = []
        if kind == FINAL_ADJUSTMENT:
            # Canceled at its start, or inside the periods a backfill skipped: only refunds.
            if not earlier or earlier[-1].end == earlier[-1].start:
                return removed_period_refunds(sub, billed, catalog)
            for each in earlier:
                lines.extend(advance_lines(sub, each, billed, currency, catalog))
            lines.extend(removed_period_refunds(sub, billed, catalog))
            lines = adjustment_lines(sub, earlier, cutoff, usage, billed, currency, catalog, invoiced) + lines
            # The last period too, adjusted or not, if a cancellation received after its
            # invoice moved the share of the minimum it commits to.
            return lines + true_up_adjustments(
                sub, earlier, lines, billed, currency, cut=earlier[-1], invoiced=invoiced
            )
        lines = period_lines(sub, period, cutoff, usage)
        advance = advance_lines(sub, period, billed, currency, catalog)
        # The minimum commitment counts the period's fees in advance: as billed before, and
        # as trued up now.
        keys = set(advance_keys(sub, catalog))
        before = [billing.amount for (start, key), billing in billed.items() if start == period.start and key in keys]
        now = [round_money(line.amount, currency) for line in advance]
        in_advance = sum(before + now, Decimal(0))
        true_up = minimum_true_up(
            sub.plan_at(period.start), lines, currency, period, in_advance, started=sub.segments[0].start
        )
        if true_up is not None:
            lines.append(true_up)
        lines.extend(already_billed_lines(lines, billed, period.start, usage_keys(sub, self.plans.values())))
        lines.extend(advance)
        following = nth_period(sub, period.index + 1)
        # A period wholly before the start (an anchor an interval or more before it) bills
        # nothing ahead: the first fee is the advance invoice's, at the start.
        if following is not None and following.end > following.start and period.end > sub.segments[0].start:
            lines.extend(advance_lines(sub, following, billed, currency, catalog))
        if earlier:
            # A period a backdated plan change moved to other plans has its fees in advance
            # trued up as well (an advance invoice does so only for the period it starts in).
            moved = replanned(sub, earlier, billed, invoiced)
            adjustments = [
                line
                for each in earlier
                if each.start in moved
                for line in advance_lines(sub, each, billed, currency, catalog)
            ]
            adjustments = (
                adjustment_lines(sub, earlier, cutoff, usage, billed, currency, catalog, invoiced) + adjustments
            )
            lines.extend(
                adjustments + true_up_adjustments(sub, earlier, adjustments, billed, currency, invoiced=invoiced)
            )
        return lines

    def _usage_lookup(self, cache: UsageCache, only: str | None = None) -> UsageLookup:
        """Usage per customer, fetched once per (meter, filter, window, cutoff) for all
        customers, or (``only``, a preview) for that customer alone."""

        def usage(price: MeteredPrice, customer_id: str, start: datetime, end: datetime, as_of: datetime) -> Usage:
            key = (price.meter, tuple(sorted(price.filter.items())), start, end, as_of)
            if key not in cache:
                meter = self._meters[price.meter]
                cache[key] = self.store.usage_by_customer(meter, price.filter, start, end, as_of, only)
            return cache[key].get(customer_id, Usage(Decimal(0), 0))

        return usage

    async def _send(self, data: dict[str, Any], currencies: Mapping[str, str]) -> list[Awaitable[object]]:
        """Enqueue the invoice and its credit events; returns their delivery futures.

        A credit event carries its grant's currency (``currencies``: grant id -> currency), as
        its ledger row does: an expired grant may be in another currency than the invoice.
        An ``empty`` invoice is not sent: it has no movements, and no line bills anything.
        """
        if data["status"] == EMPTY:
            return []
        sent = [
            await self.publish(
                "invoices",
                data["invoice_id"],
                _cloudevent(
                    "bastionary.invoice.finalized.v1", data["invoice_id"], data["customer_id"], data["issued_at"], data
                ),
            )
        ]
        carried = Decimal(data.get("carried_forward", "0"))
        for kind, movements in (
            ("applied", data.get("credit_allocations", [])),
            ("expired", data.get("credits_expired", [])),
            (
                "carried",
                [{"grant_id": movement_id("carried", data["invoice_id"]), "amount": str(carried)}] if carried else [],
            ),
        ):
            for movement in movements:
                credit = {
                    "grant_id": movement["grant_id"],
                    "customer_id": data["customer_id"],
                    "invoice_id": data["invoice_id"],
                    "amount": movement["amount"],
                    "currency": _movement_currency(kind, movement["grant_id"], data, currencies),
                }
                if "funding" in movement:
                    credit["funding"] = movement["funding"]
                event_id = movement_id(kind, movement["grant_id"], data["invoice_id"])
                event = _cloudevent(
                    f"bastionary.credit.{kind}.v1", event_id, data["customer_id"], data["issued_at"], credit
                )
                sent.append(await self.publish("credits", data["customer_id"], event))
        for request in data.get("topup_requested", []):
            event_id = movement_id("topup_requested", data["customer_id"], request["currency"], data["invoice_id"])
            topup = {"customer_id": data["customer_id"], "invoice_id": data["invoice_id"], **request}
            event = _cloudevent(
                "bastionary.credit.topup_requested.v1", event_id, data["customer_id"], data["issued_at"], topup
            )
            sent.append(await self.publish("credits", data["customer_id"], event))
        return sent


def _billed_until(
    sub: Subscription, last: Period, billed: Billed, rated: Collection[str], catalog: Mapping[str, Plan]
) -> datetime | None:
    """How far the subscription was billed as running by invoices rated before its backdated
    cancellation was known (None: not past its last period's end, as when it was known in
    time): the full end of each period after the cancellation billed anything but a fee in
    advance (a period invoice, a progressive one), and the end of the spans the last period's
    lines billed (its invoice rated as if it ran to its full end). Usage was read as of
    cutoffs up to that moment's: :func:`~bastionary.rating.schedule.last_cutoff`.

    A fee in advance is left out: the invoice of the period before bills it, and reads no usage
    of the period it pays for. Told from what is stored: the last period's spans move only on
    the final adjustment itself, except a progressive invoice's, which the last period's own
    invoice gives back when the cancellation came before it (then that invoice reads the cut
    period as of the cut end's cutoff, and so does the final adjustment: usage a progressive
    invoice billed before the cancellation, ingested after that cutoff, is given back there;
    telling when the cancellation was received would keep it)."""
    if sub.canceled_at is None:
        return None
    interval = sub.first_plan.interval
    advance = set(advance_keys(sub, catalog.values()))
    ends = [last.end]
    n = last.index + 1
    while invoice_id(sub.subscription_id, interval.nth_boundary(sub.anchor, n)) in rated:
        ends.append(interval.nth_boundary(sub.anchor, n + 1))
        n += 1
    for (start, key), billing in billed.items():
        if key in advance:
            continue
        if start >= sub.canceled_at and (billing.quantity or billing.amount):
            ends.append(interval.period_containing(sub.anchor, start)[2])
        elif start == last.start:
            ends.extend(window.end for window in billing.windows or () if window.quantity or window.amount)
    until = max(ends)
    return until if until > last.end else None


def _publish_failure(document: Mapping[str, Any], exc: PublishRefused) -> PublishFailure:
    return PublishFailure(
        document["customer_id"], document["invoice_id"], document["kind"], document["period_start"], str(exc)
    )


def _bills_nothing(lines: Sequence[Line], currency: str) -> bool:
    """Whether every line rounds to nothing at the currency's precision, as the document shows
    it: a 0.00 line only records a span (a 0.00 fee's share moved), which no customer is told."""
    return all(round_money(line.amount, currency).is_zero() for line in lines)


def _grant_currencies(grants: Mapping[str, list[Grant]]) -> dict[str, str]:
    return {grant.grant_id: grant.currency for customer in grants.values() for grant in customer}


def _movement_currency(kind: str, grant_id: str, data: dict[str, Any], currencies: Mapping[str, str]) -> str:
    currency = currencies.get(grant_id)
    if currency is not None:
        return currency
    if kind in ("applied", "carried"):  # drawn or carried in the invoice's currency
        return str(data["currency"])
    raise LookupError(f"grant {grant_id} expired on invoice {data['invoice_id']} is not in the credit ledger")


def _lapsing(grant: Grant, drawn: dict[str, Decimal], moment: datetime) -> Decimal:
    """What of ``grant`` is left to lapse at ``moment``: its remainder if it expired by then
    (not voided: a void wins) and no invoice lapsed it yet (a lapse counts as drawn)."""
    left = grant.amount - drawn.get(grant.grant_id, Decimal(0))
    return left if left > 0 and grant_status(grant, moment) == "expired" else Decimal(0)


def _lapsed_amount(amount: Decimal, currency: str) -> str:
    """A lapsed remainder as shown on the invoice and its ``credit.expired`` event: at the
    grant currency's precision like every amount (``5`` from intake or ``7.000000000`` read
    back from the ledger is ``5.00``/``7.00``), but exact: a remainder below one minor unit
    (older data) is what lapsed, so it keeps its decimals rather than round to ``0.00``."""
    places = max(MINOR_UNITS[currency], fraction_digits(amount))
    return format(amount.quantize(Decimal(1).scaleb(-places)), "f")


def _ledger_row(kind: str, grant: Grant, amount: Decimal, invoice: str, recorded: datetime) -> LedgerRow:
    return LedgerRow(
        movement_id(kind, grant.grant_id, invoice),
        kind,
        grant.grant_id,
        grant.customer_id,
        amount,  # exact: draws are whole minor units already, and a lapsed remainder is what it is
        grant.currency,
        grant.priority,
        grant.effective_at,
        grant.expires_at,
        invoice,
        recorded,
    )


def _cloudevent(event_type: str, event_id: str, subject: str, time: str, data: dict[str, Any]) -> bytes:
    return cloud_event(event_type, event_id, "bastionary/rater", subject, time, data)
