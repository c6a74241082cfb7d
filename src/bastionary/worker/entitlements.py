"""Faust wiring for entitlements: the state table, override intake, change polling, the
check API (routed to the worker that owns the customer) and the changes reconciler."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta, timezone

import faust
import structlog
from faust.web.exceptions import ServiceUnavailable

from bastionary import metrics
from bastionary.catalog import Catalog
from bastionary.entitlements.auth import valid_customer_id, valid_feature
from bastionary.entitlements.overrides import InvalidOverride, parse_override
from bastionary.entitlements.service import Entitlements, UnknownCustomer
from bastionary.entitlements.state import Loaded, known_features
from bastionary.rating.events import latest_event_time
from bastionary.settings import Settings
from bastionary.storage.entitlements import ClickHouseEntitlementStore
from bastionary.topics import Topics
from bastionary.worker.billing import consume_intake
from bastionary.worker.http import authenticated, json_error

log = structlog.get_logger(__name__)
POLL_SECONDS = 1.0  # how soon a subscription, override or suspension change reaches checks
# Rows become visible to the poll a little after their received_at: look back this far.
POLL_WINDOW = timedelta(seconds=5)


def install_entitlements(app: faust.App, settings: Settings, catalog: Catalog, client_factory, sink, dead_letter):
    """``sink()`` -> the UsageSink whose flushes feed the usage counters."""
    topics = Topics(settings.topic_prefix)
    raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.usage_partitions}
    overrides_topic = app.topic(topics.entitlement_overrides, **raw)
    changes_topic = app.topic(topics.entitlement_changes, **raw)
    # Keyed by customer id like usage.events, with as many partitions: Faust assigns both
    # topics' partition n to one worker, and routes a check to the owner of its key.
    # key_type bytes = the raw serializer: the key's bytes are the customer id, as on usage.events.
    table = app.Table("entitlements", default=None, partitions=settings.usage_partitions, key_type=bytes,
                      use_partitioner=True)
    features = known_features(catalog.plans)
    state: dict = {}

    def mirror(customer: str, loaded: Loaded) -> None:
        """The table holds each owned customer's state for operators; checks use memory."""
        snapshot = {
            "plan": loaded.state.plan.key if loaded.state.plan else None,
            "period_start": loaded.state.period_start.isoformat() if loaded.state.period_start else None,
            "usage": {k: str(v) for k, v in loaded.state.usage.items()},
            "suspended": loaded.state.suspended,
        }
        with contextlib.suppress(Exception):
            table[customer.encode()] = snapshot

    async def publish(key: str, value: bytes):
        return await changes_topic.send(key=key.encode(), value=value)

    def service() -> Entitlements:
        if "service" not in state:
            usage_sink = sink()
            store = ClickHouseEntitlementStore(client_factory(), catalog.plans)
            state["store"] = store
            state["service"] = Entitlements(store, catalog.meters, publish, usage_sink.lock, on_loaded=mirror)
            usage_sink.listeners.append(state["service"].on_flush)
            metrics.ENTITLEMENT_CUSTOMERS.set_function(lambda: state["service"].customers_in_memory)
        return state["service"]

    async def store_override(message) -> None:
        latest = latest_event_time(message.timestamp, settings.max_future_skew)
        override = parse_override(message.value or b"", latest_time=latest)
        await asyncio.to_thread(state["store"].insert_override, override)
        service().invalidate([override.customer_id])

    @app.agent(overrides_topic, name="entitlement-overrides")
    async def override_intake(stream):
        # Rejected overrides go to billing.dlq; see consume_intake for what else can happen to one.
        await consume_intake(app, stream, dead_letter=dead_letter, dlq_topic=topics.billing_dlq,
                             invalid=InvalidOverride, handle=store_override, prepare=service)

    @app.task
    async def follow_changes() -> None:
        """Subscriptions, overrides and dunning suspensions land in ClickHouse from several
        agents and workers; polling it is the one path that sees them all, restarts included."""
        since = datetime.now(timezone.utc)
        seen: dict[tuple[str, str], datetime] = {}  # rows already acted on, kept while in the window
        reconciler = asyncio.ensure_future(service().run_reconciler())
        try:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                now = datetime.now(timezone.utc)
                try:
                    rows = await asyncio.to_thread(state["store"].changed_rows, since)
                except Exception:
                    log.exception("entitlement change poll failed; retried")
                    continue
                since = now - POLL_WINDOW
                fresh = rows - seen.keys()
                seen = {row: at for row, at in seen.items() if at > since} | {row: now for row in fresh}
                if fresh:
                    service().invalidate({customer for customer, _ in fresh})
        finally:
            reconciler.cancel()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        if "service" in state:
            state["service"].forget_all()

    routed = app.table_route(table=table, match_info="customer_id")

    async def answer_one(view, request, customer_id: str, feature: str):
        try:
            decision = await service().check(customer_id, feature)
        except UnknownCustomer:
            return json_error(404, "unknown_customer", f"no customer {customer_id!r}")
        if decision.reason == "not_in_plan" and feature not in features:
            return json_error(404, "unknown_feature", f"no plan has a feature {feature!r}")
        return view.json(decision.to_json())

    async def answer_all(view, request, customer_id: str):
        try:
            decisions = await service().check_all(customer_id)
        except UnknownCustomer:
            return json_error(404, "unknown_customer", f"no customer {customer_id!r}")
        return view.json({"customer_id": customer_id, "entitlements": [d.to_json() for d in decisions]})

    routed_one, routed_all = routed(answer_one), routed(answer_all)

    async def via_owner(handler, view, request, **params):
        try:
            return await handler(view, request, **params)
        except (ServiceUnavailable, KeyError, TypeError, ValueError):
            # Before the first assignment (or mid-rebalance) no worker is known to own the key.
            log.debug("no owner known for the customer yet", exc_info=True)
            response = json_error(503, "not_ready", "partitions are being assigned; retry shortly")
            response.headers["Retry-After"] = "1"
            return response

    def refused(request, customer_id: str, feature: str | None = None):
        denied = authenticated(request, settings)
        if denied is not None:
            return denied
        if not valid_customer_id(customer_id):
            return json_error(400, "invalid_customer_id", "customer ids are 1-128 of A-Z a-z 0-9 . _ : @ -")
        if feature is not None and not valid_feature(feature):
            return json_error(400, "invalid_feature", "features are lowercase letters, digits and _")
        return None

    @app.page("/v1/customers/{customer_id}/entitlements/{feature}")
    class FeatureView(faust.web.View):
        async def get(self, request, customer_id: str, feature: str):
            return refused(request, customer_id, feature) or await via_owner(
                routed_one, self, request, customer_id=customer_id, feature=feature)

    @app.page("/v1/customers/{customer_id}/entitlements")
    class CustomerView(faust.web.View):
        async def get(self, request, customer_id: str):
            return refused(request, customer_id) or await via_owner(routed_all, self, request, customer_id=customer_id)
