"""``GET /v1/customers/{customer_id}/entitlements[/{feature}]``, answered by the worker that
owns the customer: any worker takes the request, answers it itself when it owns the
customer's partition of the ``entitlements`` table (partitioned like ``usage.events``), and
otherwise lets Faust route it to the owner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
import structlog
from faust.web.exceptions import ServiceUnavailable

from bastionary.apikeys import ApiKey
from bastionary.entitlements.auth import valid_feature
from bastionary.entitlements.service import UnknownCustomer
from bastionary.worker.api.auth import Guard, json_error
from bastionary.worker.api.owners import PartitionOwnership
from bastionary.worker.services.entitlements import EntitlementService

log = structlog.get_logger(__name__)


def install(app: faust.App, guard: Guard, service: EntitlementService) -> None:
    routed = app.table_route(table=service.table, match_info="customer_id")
    ownership = PartitionOwnership(app, service.table)

    async def forget_partitions(sender: Any, revoked: Any, **kwargs: Any) -> None:
        ownership.forget()

    # mode types a receiver as taking any positional arguments after the sender; this signal
    # sends exactly one, the revoked partitions.
    app.on_partitions_revoked.connect(forget_partitions)  # type: ignore[arg-type]

    async def answer_one(view: Any, request: Any, customer_id: str, feature: str) -> Any:
        try:
            decision = await service.check(customer_id, feature)
        except UnknownCustomer:
            return json_error(404, "unknown_customer", f"no customer {customer_id!r}")
        if decision.reason == "not_in_plan" and feature not in service.features:
            return json_error(404, "unknown_feature", f"no plan has a feature {feature!r}")
        return view.json(decision.to_json())

    async def answer_all(view: Any, request: Any, customer_id: str) -> Any:
        try:
            decisions = await service.check_all(customer_id)
        except UnknownCustomer:
            return json_error(404, "unknown_customer", f"no customer {customer_id!r}")
        return view.json({"customer_id": customer_id, "entitlements": [d.to_json() for d in decisions]})

    routed_one, routed_all = routed(answer_one), routed(answer_all)

    async def via_owner(
        here: Callable[..., Awaitable[Any]],
        elsewhere: Callable[..., Awaitable[Any]],
        view: Any,
        request: Any,
        **params: str,
    ) -> Any:
        try:
            if ownership.owned_here(params["customer_id"]):
                return await here(view, request, **params)
            return await elsewhere(view, request, **params)
        except (ServiceUnavailable, KeyError, TypeError, ValueError):
            # Before the first assignment (or mid-rebalance) no worker is known to own the key.
            log.debug("no owner known for the customer yet", exc_info=True)
            response = json_error(503, "not_ready", "partitions are being assigned; retry shortly")
            response.headers["Retry-After"] = "1"
            return response

    def refused(request: Any, customer_id: str, feature: str | None = None) -> Any:
        key = guard.customer_path(request, "read", customer_id)
        if not isinstance(key, ApiKey):
            return key
        if feature is not None and not valid_feature(feature):
            return json_error(400, "invalid_feature", "features are lowercase letters, digits and _")
        return None

    @app.page("/v1/customers/{customer_id}/entitlements/{feature}")
    class FeatureView(faust.web.View):
        async def get(self, request: Any, customer_id: str, feature: str) -> Any:
            return refused(request, customer_id, feature) or await via_owner(
                answer_one, routed_one, self, request, customer_id=customer_id, feature=feature
            )

    @app.page("/v1/customers/{customer_id}/entitlements")
    class CustomerView(faust.web.View):
        async def get(self, request: Any, customer_id: str) -> Any:
            return refused(request, customer_id) or await via_owner(
                answer_all, routed_all, self, request, customer_id=customer_id
            )
