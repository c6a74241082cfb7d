"""The entitlements service: each owned customer's state in memory, fed by the usage flushes,
the override intake, a poll of ClickHouse for changes from any worker, the changes
reconciler, and the ``entitlement-owners`` table that routes checks to the owner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from bastionary import metrics
from bastionary.catalog import Catalog
from bastionary.entitlements.evaluate import REASONS, Decision
from bastionary.entitlements.overrides import InvalidOverride, parse_override
from bastionary.entitlements.service import Entitlements
from bastionary.entitlements.state import Loaded, known_features
from bastionary.storage.client import Client
from bastionary.storage.entitlements import ClickHouseEntitlementStore
from bastionary.worker.context import WorkerContext
from bastionary.worker.intake import consume_intake, count_dead_letters_from
from bastionary.worker.routing_table import routing_table
from bastionary.worker.services.usage import UsageService

log = structlog.get_logger(__name__)
POLL_SECONDS = 1.0  # how soon a subscription, override or suspension change reaches checks
# Rows become visible to the poll a little after their received_at: look back this far.
POLL_WINDOW = timedelta(seconds=5)
# The Faust table whose assignment routes a check to the customer's owner (its changelog:
# ``<consumer group>-entitlement-owners-changelog``, always empty).
OWNERS_TABLE = "entitlement-owners"


class EntitlementService:
    def __init__(self, ctx: WorkerContext, catalog: Catalog, client_factory: Callable[[], Client], usage: UsageService):
        self.ctx = ctx
        self.catalog = catalog
        self.features = known_features(catalog.plans)
        metrics.start_at_zero(metrics.ENTITLEMENT_CHECKS, [("granted", "")] + [("denied", r) for r in REASONS])
        self._client_factory = client_factory
        self._usage = usage
        self._store: ClickHouseEntitlementStore | None = None
        self._service: Entitlements | None = None
        # Keyed by customer id like usage.events, with as many partitions: Faust assigns both
        # topics' partition n to one worker, and routes a check to the owner of its key.
        # Named anew: the changelog of the table named "entitlements" may hold the state copies
        # workers wrote before 2026-12-07, and a worker restarted over them stopped delivering
        # notices; that topic is no longer read (an operator may delete it).
        # It refuses writes (worker/routing_table.py says why).
        self.table = routing_table(ctx.app, OWNERS_TABLE, partitions=ctx.settings.usage_partitions)

    @property
    def service(self) -> Entitlements:
        """Opened at first use, when the worker starts; hears about every landed usage flush."""
        return self._opened()[0]

    @property
    def store(self) -> ClickHouseEntitlementStore:
        return self._opened()[1]

    def _opened(self) -> tuple[Entitlements, ClickHouseEntitlementStore]:
        if self._service is None or self._store is None:
            sink = self._usage.sink
            store = ClickHouseEntitlementStore(self._client_factory(), self.catalog.plans)
            service = Entitlements(
                store, self.catalog.plans, self.catalog.meters, self._publish, sink.lock, on_loaded=self._count_load
            )
            sink.listeners.append(service.on_flush)
            sink.rows_wanted = service.usage_rows_wanted
            metrics.ENTITLEMENT_CUSTOMERS.set_function(lambda: service.customers_in_memory)
            self._service, self._store = service, store
        return self._service, self._store

    def install(self) -> None:
        app = self.ctx.app
        overrides = self.ctx.topic(self.ctx.topics.entitlement_overrides)
        app.agent(overrides, name="entitlement-overrides")(self._override_intake)
        count_dead_letters_from([self.ctx.topics.entitlement_overrides])
        app.task(self._follow_changes)
        # mode types a receiver as taking any positional arguments after the sender; this
        # signal sends exactly one, the revoked partitions.
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    async def check(self, customer_id: str, feature: str) -> Decision:
        decision = await self.service.check(customer_id, feature)
        _count(decision)
        return decision

    async def check_all(self, customer_id: str) -> list[Decision]:
        decisions = await self.service.check_all(customer_id)
        for decision in decisions:
            _count(decision)
        return decisions

    def knows_feature(self, customer_id: str, feature: str) -> bool:
        """A plan of the catalog or one of the customer's overrides names ``feature``: else a
        check of it is ``404 unknown_feature`` (openapi.yaml)."""
        return feature in self.features or (
            self._service is not None and self._service.named_by_override(customer_id, feature)
        )

    def limits_changed(self, customers: set[str]) -> None:
        """This worker's spend monitor stored a reached/restored event for ``customers``: read
        those it holds again now (the poll would, within a second; this is for the owner of
        both, as on one worker)."""
        if self._service is not None:
            self._service.invalidate(customers)

    def _count_load(self, customer: str, loaded: Loaded) -> None:
        # The table routes checks to the owner and holds nothing. A copy of each state loaded,
        # written to it from outside any stream, stalled a restarted worker's notice delivery
        # (tests/integration/test_dunning_crash.py), and Faust serves its tables unkeyed.
        metrics.ENTITLEMENT_STATE_LOADS.inc()

    async def _publish(self, key: str, value: bytes) -> Any:
        return await self.ctx.topic(self.ctx.topics.entitlement_changes).send(key=key.encode(), value=value)

    async def _store_override(self, message: Any) -> None:
        override = parse_override(message.value or b"", latest_time=self.ctx.latest_time(message))
        service, store = self._opened()
        await asyncio.to_thread(store.insert_override, override)
        service.invalidate([override.customer_id])

    async def _override_intake(self, stream: Any) -> None:
        # Rejected overrides go to billing.dlq; see consume_intake for what else can happen to one.
        await consume_intake(
            self.ctx.app,
            stream,
            dead_letter=self.ctx.dead_letter,
            dlq_topic=self.ctx.topics.billing_dlq,
            invalid=InvalidOverride,
            handle=self._store_override,
            prepare=lambda: self.service,
        )

    async def _follow_changes(self) -> None:
        """Subscriptions, overrides and dunning suspensions land in ClickHouse from several
        agents and workers; polling it is the one path that sees them all, restarts included."""
        since = datetime.now(UTC)
        seen: dict[tuple[str, str], datetime] = {}  # rows already acted on, kept while in the window
        # Changed customers whose owner is not known yet (the worker is joining the group, or a
        # rebalance is under way): asked again once it is, rather than taken for another's.
        unsettled: set[str] = set()
        service, store = self._opened()
        reconciler = asyncio.ensure_future(service.run_reconciler())
        try:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                now = datetime.now(UTC)
                try:
                    rows = await asyncio.to_thread(store.changed_rows, since)
                except Exception:
                    log.exception("entitlement change poll failed; retried")
                    continue
                since = now - POLL_WINDOW
                fresh = rows - seen.keys()
                seen = {row: at for row, at in seen.items() if at > since} | dict.fromkeys(fresh, now)
                changed = {customer for customer, _ in fresh} | unsettled
                if not changed:
                    continue
                if self.ctx.assignment_settled():
                    service.invalidate(changed, owned=self._owns)
                    unsettled = set()
                else:
                    service.invalidate(changed)  # only those held in memory, which a check read
                    unsettled = changed
        finally:
            reconciler.cancel()

    def _owns(self, customer: str) -> bool:
        # The entitlements table is partitioned like usage.events, and Faust assigns both
        # topics' partition n to one worker.
        return self.ctx.owns(customer, self.ctx.topics.usage_events)

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        if self._service is not None:
            self._service.forget_all()


def _count(decision: Decision) -> None:
    if decision.has_access:
        metrics.ENTITLEMENT_CHECKS.labels("granted", "").inc()
    else:
        metrics.ENTITLEMENT_CHECKS.labels("denied", decision.reason or "").inc()
