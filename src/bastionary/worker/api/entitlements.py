"""``GET /v1/customers/{customer_id}/entitlements[/{feature}]``, answered by the worker that
owns the customer: any worker takes the request, answers it itself when it owns the
customer's partition of the ``entitlements`` table (partitioned like ``usage.events``), and
otherwise forwards it to the owner that Faust's assignment names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import faust
import structlog
from aiohttp import web
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

from bastionary.apikeys import ApiKey
from bastionary.entitlements.auth import valid_feature
from bastionary.entitlements.service import UnknownCustomer
from bastionary.worker.api.auth import Guard, json_error
from bastionary.worker.api.owners import PartitionOwnership
from bastionary.worker.services.entitlements import EntitlementService

log = structlog.get_logger(__name__)

# Set on a check one worker forwards to another. A worker that receives one for a customer it
# does not own answers 503 rather than forwarding again: mid-rebalance two workers may each
# take the other for the owner, and would pass the request back and forth until it timed out.
FORWARDED_HEADER = "X-Bastionary-Forwarded"
# An owner answers a check in milliseconds (a first one reads ClickHouse); one slower than this
# is down or stuck, and the caller is better told to retry than held for aiohttp's 5 minutes.
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=5)
# What the caller needs of the owner's answer besides its status and body.
KEPT_HEADERS = ("Retry-After", "WWW-Authenticate")
RETRY_AFTER_S = 1


def install(app: faust.App, guard: Guard, service: EntitlementService) -> None:
    ownership = PartitionOwnership(app, service.table)

    async def forget_partitions(sender: Any, partitions: Any, **kwargs: Any) -> None:
        ownership.forget()

    # A rebalance may change the partition count, and a key asked between the revocation
    # and the new assignment was hashed with the count from before: forget at both ends.
    # mode types a receiver as taking any positional arguments after the sender; these
    # signals send exactly one, the revoked or the assigned partitions.
    app.on_partitions_revoked.connect(forget_partitions)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(forget_partitions)  # type: ignore[arg-type]

    async def answer_one(view: Any, request: Any, customer_id: str, feature: str) -> Any:
        try:
            decision = await service.check(customer_id, feature)
        except UnknownCustomer:
            return json_error(404, "unknown_customer", f"no customer {customer_id!r}")
        if decision.reason == "not_in_plan" and not service.knows_feature(customer_id, feature):
            return json_error(404, "unknown_feature", f"no plan or override has a feature {feature!r}")
        return view.json(decision.to_json())

    async def answer_all(view: Any, request: Any, customer_id: str) -> Any:
        try:
            decisions = await service.check_all(customer_id)
        except UnknownCustomer:
            return json_error(404, "unknown_customer", f"no customer {customer_id!r}")
        return view.json({"customer_id": customer_id, "entitlements": [d.to_json() for d in decisions]})

    def retry_shortly(response: web.Response) -> web.Response:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    async def forwarded(here: Callable[..., Awaitable[Any]], view: Any, request: web.Request, **params: str) -> Any:
        if FORWARDED_HEADER in request.headers:
            return retry_shortly(json_error(503, "not_ready", "partitions are being assigned; retry shortly"))
        owner = app.router.key_store(service.table.name, params["customer_id"])
        if _same_worker(owner, URL(str(app.conf.canonical_url))):
            return await here(view, request, **params)  # as Faust's routing answers it
        # The owner's own address (its scheme and any path prefix included), and only the
        # caller's key: the owner checks it again, as for a request it took itself.
        url = URL(str(owner).rstrip("/") + request.raw_path, encoded=True)
        headers = {FORWARDED_HEADER: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with app.http_client.get(url, headers=headers, timeout=FORWARD_TIMEOUT) as answer:
                body = await answer.read()
                kept = {name: answer.headers[name] for name in KEPT_HEADERS if name in answer.headers}
                return web.Response(body=body, status=answer.status, content_type=answer.content_type, headers=kept)
        except (aiohttp.ClientError, TimeoutError) as failure:
            log.warning("the customer's owner did not answer a check", owner=str(owner), error=repr(failure)[:300])
            return retry_shortly(
                json_error(503, "unavailable", "the worker that owns the customer did not answer; retry shortly")
            )

    async def via_owner(here: Callable[..., Awaitable[Any]], view: Any, request: Any, **params: str) -> Any:
        try:
            if ownership.owned_here(params["customer_id"]):
                return await here(view, request, **params)
            return await forwarded(here, view, request, **params)
        except (ServiceUnavailable, KeyError, TypeError, ValueError):
            # Before the first assignment (or mid-rebalance) no worker is known to own the key.
            log.debug("no owner known for the customer yet", exc_info=True)
            return retry_shortly(json_error(503, "not_ready", "partitions are being assigned; retry shortly"))

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
                answer_one, self, request, customer_id=customer_id, feature=feature
            )

    @app.page("/v1/customers/{customer_id}/entitlements")
    class CustomerView(faust.web.View):
        async def get(self, request: Any, customer_id: str) -> Any:
            return refused(request, customer_id) or await via_owner(answer_all, self, request, customer_id=customer_id)


def _same_worker(a: URL, b: URL) -> bool:
    # As Faust's router compares them: host and port, whatever the scheme.
    return (a.host or a.path, a.port or 80) == (b.host or b.path, b.port or 80)
