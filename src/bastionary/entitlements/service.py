"""Entitlement state of the customers a worker owns, kept current by the usage flushes.

Exactness: a customer's state is read from ClickHouse while holding the usage sink's flush
lock, and from then on each landed flush adds its rollup deltas (SUM and COUNT meters; any
other aggregation, and any replayed flush, makes the state be read again). So the usage a
check sees is the rollup total for the period, with no flush counted twice or missed.

Changes (threshold, exhausted, ...) are stored, then published, then marked published, as
the rater does with invoices; a crash in between republishes the same change ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

import structlog

from bastionary.entitlements.changes import Change, change_event, due_changes
from bastionary.entitlements.evaluate import WIDE, Decision, check, check_all
from bastionary.entitlements.ports import EntitlementStore
from bastionary.entitlements.spec import EntitledPlan, MeteredEntitlement
from bastionary.entitlements.state import Loaded, build_states, named_by_override, suspension_changes
from bastionary.metering.meters import Meter, behaviour
from bastionary.metering.sink import LandedFlush

log = structlog.get_logger(__name__)
# (key, CloudEvent JSON) -> awaiting it enqueues and returns the delivery future
Publish = Callable[[str, bytes], Awaitable[Awaitable[object]]]
# Customers read per query batch: first-seen customers (a worker starting, or a new owner after
# a rebalance) are read a batch at a time, each batch holding the flush lock for a handful of
# queries rather than one customer's queries at a time.
LOAD_BATCH = 500


class UnknownCustomer(LookupError):
    pass


class _Counting(NamedTuple):
    feature: str
    wanted: tuple[tuple[str, str], ...]  # the entitlement's filter on the meter's groups
    additive: bool  # False: the flush's rows cannot move it, the customer is read again
    column: str  # the rollup column that moves it


class Entitlements:
    def __init__(
        self,
        store: EntitlementStore,
        plans: Iterable[EntitledPlan],
        meters: Iterable[Meter],
        publish: Publish,
        lock: asyncio.Lock,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_loaded: Callable[[str, Loaded], None] | None = None,
    ):
        self.store = store
        self.publish = publish
        self.lock = lock  # the usage sink's flush lock
        self.now = now
        self.on_loaded = on_loaded
        self._plans = {p.key: p for p in plans}
        self._meters = {m.key: m for m in meters}
        self._loaded: dict[str, Loaded | None] = {}
        self._dirty: set[str] = set()
        self._unpublished: set[str] = set()  # stored changes a publish may not have reached
        self._wake = asyncio.Event()
        self._counting: dict[tuple[int, str], tuple[EntitledPlan, list[_Counting]]] = {}

    # -- checks --------------------------------------------------------------------------

    async def check(self, customer: str, feature: str) -> Decision:
        return check((await self._state(customer)).state, feature, self.now())

    async def check_all(self, customer: str) -> list[Decision]:
        return check_all((await self._state(customer)).state, self.now())

    def named_by_override(self, customer: str, feature: str) -> bool:
        """:func:`~bastionary.entitlements.state.named_by_override`, of the customer's held state."""
        loaded = self._loaded.get(customer)
        return loaded is not None and named_by_override(loaded.state, feature)

    async def _state(self, customer: str) -> Loaded:
        loaded = self._loaded.get(customer)  # None: not read yet, or read and unknown
        if self._unread(customer, self.now()):
            loaded = await self._load(customer)
        if loaded is None:
            raise UnknownCustomer(customer)
        return loaded

    def _unread(self, customer: str, now: datetime) -> bool:
        """Not read yet, or read before a period boundary passed (its counters reset)."""
        loaded = self._loaded.get(customer)
        return customer not in self._loaded or (loaded is not None and loaded.stale_at(now))

    async def _load(self, customer: str) -> Loaded | None:
        return (await self._load_many([customer]))[customer]

    async def _load_many(self, customers: list[str]) -> dict[str, Loaded | None]:
        """Read customers' state in one batch, under the flush lock (no flush lands halfway
        through the read), off the event loop."""
        async with self.lock:
            states = await asyncio.to_thread(build_states, self.store, self._plans, self._meters, customers, self.now())
            self._loaded.update(states)
        # Whatever read them (a check, after a restart or a partition move), the reconciler
        # derives their changes once: a limit crossed by a flush that landed before the read
        # would otherwise go untold, as an exhausted customer sends no usage to wake it.
        self._dirty.update(customer for customer, loaded in states.items() if loaded is not None)
        self._wake.set()
        log.debug("entitlement states loaded", customers=len(states), known=sum(1 for s in states.values() if s))
        if self.on_loaded is not None:
            for customer, loaded in states.items():
                if loaded is not None:
                    self.on_loaded(customer, loaded)
        return states

    async def _load_unread(self, customers: list[str], now: datetime) -> None:
        """Read, in batches, the customers among ``customers`` not in memory (or stale)."""
        unread = [c for c in customers if self._unread(c, now)]
        for start in range(0, len(unread), LOAD_BATCH):
            await self._load_many(unread[start : start + LOAD_BATCH])

    # -- inputs --------------------------------------------------------------------------

    def invalidate(self, customers: Iterable[str], owned: Callable[[str], bool] | None = None) -> None:
        """Their subscription, overrides or suspension changed: read them again, then reconcile.

        ``owned``: whether this worker owns a customer it holds no state of. Those are read too:
        a suspension, a reinstatement or an override is told on the changes topic when it
        happens, not at the customer's next check, which a suspended customer may never make."""
        for customer in customers:
            if customer in self._loaded:
                self._loaded.pop(customer)
                self._dirty.add(customer)
            elif owned is not None and owned(customer):
                self._dirty.add(customer)
        self._wake.set()

    @property
    def customers_in_memory(self) -> int:
        """How many customers' state this worker holds (it owns them), for the metrics."""
        return len(self._loaded)

    def forget_all(self) -> None:
        """Partitions moved: what this worker owns may have changed."""
        self._loaded.clear()
        self._dirty.clear()

    def on_flush(self, flushes: list[LandedFlush]) -> None:
        """A UsageSink listener: called under the flush lock once ``flushes`` have landed.

        It runs on the event loop, between checks, so each customer's usage is copied once
        per call and its state replaced once, not once per rollup row; the deltas are still
        added in row order.
        """
        now = self.now()
        touched: set[str] = set()
        stale: set[str] = set()
        counted: dict[str, tuple[Loaded, dict[str, Decimal]]] = {}  # customer -> its usage so far
        for flush in flushes:
            if flush.rows_of is not None:
                # Rows came only for the customers held when the flush was planned (see
                # usage_rows_wanted). One held now without its rows was read since: read again.
                for customer in flush.customers - flush.rows_of:
                    if customer not in self._loaded:
                        touched.add(customer)  # as below: the reconciler reads it
                    elif self._loaded[customer] is not None:
                        stale.add(customer)
            for row in flush.rollup_rows:
                meter, customer, group_values, window_start = (
                    row.meter,
                    row.customer_id,
                    row.group_values,
                    row.window_start,
                )
                if customer not in self._loaded:
                    # Not read yet: the reconciler reads it (this flush included) so that a
                    # limit crossed by a customer nobody has checked still emits its changes.
                    touched.add(customer)
                    continue
                loaded = self._loaded[customer]
                if loaded is None:
                    continue
                state = loaded.state
                # No plan now: no period, and no usage to count (build_state sets all three or none).
                usage_start = state.usage_start
                if state.plan is None or usage_start is None or state.period_end is None:
                    continue
                if flush.replayed:
                    stale.add(customer)  # part of it may be counted already: read it again
                    continue
                if window_start >= state.period_end and loaded.stale_at(now):
                    stale.add(customer)  # its period is over: read in the new one, this flush included
                    continue
                if not usage_start <= window_start < state.period_end:
                    continue
                for feature, wanted, additive, column in self._counted_by(state.plan, meter):
                    if wanted and any(group_values.get(k) != v for k, v in wanted):
                        continue
                    if not additive:  # a MAX or a UNIQUE_COUNT does not move by deltas
                        stale.add(customer)
                        continue
                    if customer not in counted:
                        counted[customer] = (loaded, dict(state.usage))
                    usage = counted[customer][1]
                    # Exact, as the rollups sum it: the default context would round past 28 digits.
                    usage[feature] = WIDE.add(usage.get(feature, 0), getattr(row, column))
                    touched.add(customer)
        for loaded, usage in counted.values():
            loaded.state = replace(loaded.state, usage=usage)
        for customer in stale:
            self._loaded.pop(customer, None)
        self._dirty |= touched | stale
        if self._dirty:
            self._wake.set()

    def usage_rows_wanted(self) -> frozenset[str]:
        """The customers whose rollup rows :meth:`on_flush` counts: those held with a state.
        Of any other customer, a flush's customer list is enough (it is read when needed)."""
        return frozenset(customer for customer, loaded in self._loaded.items() if loaded is not None)

    def _counted_by(self, plan: EntitledPlan, meter: str) -> list[_Counting]:
        """The plan's metered features that ``meter``'s rollups count towards, worked out once
        per plan and meter rather than for every row of every flush."""
        cached = self._counting.get((id(plan), meter))
        if cached is not None and cached[0] is plan:
            return cached[1]
        counting = [
            _Counting(e.feature, tuple(e.filter.items()), aggregation.additive, aggregation.rollup_column)
            for e in plan.entitlements
            if isinstance(e, MeteredEntitlement) and e.meter == meter
            for aggregation in [behaviour(self._meters[meter].aggregation)]
        ]
        self._counting[(id(plan), meter)] = (plan, counting)  # the plan kept: its id is not reused
        return counting

    # -- changes -------------------------------------------------------------------------

    async def run_reconciler(self, interval: float = 5.0) -> None:
        """Emit the changes due for dirty customers; every ``interval``, for all loaded ones
        (an override starting or expiring changes access without any input arriving)."""
        self._unpublished = await asyncio.to_thread(self.store.unpublished_customers)
        self._dirty |= self._unpublished
        loop = asyncio.get_running_loop()
        swept_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, swept_at + interval - loop.time()))
            # By the clock, not only when nothing woke it: every landed flush wakes it, and
            # on a busy worker a customer nobody checks was never told of a new period or an
            # override's start or end.
            if loop.time() - swept_at >= interval:
                swept_at = loop.time()
                self._dirty |= await self._clocked_customers()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                await self._load_unread(sorted(dirty), self.now())
            except Exception:
                log.exception("entitlement states not read; retried", customers=len(dirty))
                self._dirty |= dirty
                continue
            self._dirty -= dirty  # marked by their own read: reconciled just below
            for n, customer in enumerate(sorted(dirty)):
                if n % 50 == 49:
                    await asyncio.sleep(0)  # a long sweep must not hold checks up
                try:
                    await self.reconcile(customer)
                except UnknownCustomer:
                    pass
                except Exception:
                    log.exception("entitlement changes not emitted; retried", customer_id=customer)
                    self._dirty.add(customer)
                    self._unpublished.add(customer)

    async def _clocked_customers(self) -> set[str]:
        """The held customers whose access may have changed with no input (:func:`_clocked`).
        Now run every ``interval`` on a busy worker too: the scan yields between slices, so a
        worker holding many customers does not hold checks up while it looks."""
        now, due = self.now(), set()
        for n, (customer, loaded) in enumerate(list(self._loaded.items())):
            if n % 2000 == 1999:
                await asyncio.sleep(0)
            if loaded is not None and _clocked(loaded, now):
                due.add(customer)
        return due

    async def reconcile(self, customer: str) -> list[Change]:
        """Store, publish and mark the changes now due for ``customer``; returns them."""
        if customer in self._unpublished:
            for change, ordinal in await asyncio.to_thread(self.store.unpublished, customer):
                await (await self.publish(customer, change_event(change, self.now())))
                await asyncio.to_thread(self.store.mark_published, customer, [change], ordinal)
            self._unpublished.discard(customer)
        loaded = await self._state(customer)
        due = suspension_changes(loaded)
        due += due_changes(loaded.state, loaded.recorded + due, self.now())
        if not due:
            return []
        first = len(loaded.recorded)
        await asyncio.to_thread(self.store.store_changes, due, first)
        loaded.recorded.extend(due)
        now = self.now()
        await asyncio.gather(*[await self.publish(customer, change_event(change, now)) for change in due])
        await asyncio.to_thread(self.store.mark_published, customer, due, first)
        for change in due:
            log.info("entitlement change", customer_id=customer, kind=change.kind, feature=change.feature)
        return due


def _clocked(loaded: Loaded, now: datetime) -> bool:
    """Access can change with no input: an override starts or ends, or the period ends."""
    return loaded.stale_at(now) or any(
        o.effective_at > now - timedelta(minutes=1)
        or (o.expires_at is not None and o.expires_at > now - timedelta(minutes=1))
        for o in loaded.state.overrides
    )
