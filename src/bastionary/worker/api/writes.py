"""The write API for billing inputs: each request becomes the CloudEvent a producer would
publish, checked by the topic reader's own parser and sent to the same topic, so there is
one path and one validation. 202 once the broker has acknowledged it.

A write is also checked against what is stored, as the reader checks it: 400
``customer_mismatch`` for another customer's subscription, grant id or invoice (checked
first, so a key scoped to one customer learns nothing of another's plan), and
``incompatible_plan`` for a plan change, ``invalid_data`` for a grant or purchase of a grant
id its customer holds already with other terms. The reader's check stays the one that counts,
since the created event may still be on its way.

``Idempotency-Key`` makes a retried POST safe. The first request under a key is recorded
(``api_idempotency``) with the event it publishes, before publishing; a retry with the same
data publishes that very event again (same id, same bytes), which every billing table keeps
once; a reuse of the key with other data is refused (422 ``idempotency_key_reused``), as
Stripe does. Keys are per API key and path. A crash between the record and the publish is
mended by the retry. Requests under one key take turns on a worker: a second one sent while
the first is in progress (a client's retry after a timeout) waits for it, then is answered
as a retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from aiohttp import web

from bastionary.apikeys import ApiKey
from bastionary.dunning.events import PAYMENT_TYPES, PaymentData, check_payment_owner, parse_payment
from bastionary.locks import KeyedLocks
from bastionary.outbound import cloud_event
from bastionary.rating.credit_notes import CREDIT_NOTE_REQUESTED, parse_credit_note_request
from bastionary.rating.customers import CUSTOMER_UPSERTED, parse_customer
from bastionary.rating.events import (
    CREDIT_TYPES,
    SUBSCRIPTION_TYPES,
    CreditGrantData,
    InvalidBillingEvent,
    SubscriptionData,
    check_grant_owner,
    check_grant_terms,
    check_owner,
    check_plan_change,
    latest_event_time,
    parse_credit,
    parse_subscription,
)
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.storage.idempotency import IdempotencyRecord
from bastionary.worker.api.auth import Guard, forbidden_customer, json_error
from bastionary.worker.services.api import ApiBackend
from bastionary.worker.services.dunning import DunningService

IDEMPOTENCY_NAMESPACE = uuid.UUID("0b7f3c0e-5d0c-4a8e-9f57-3f0d2f1c9a11")
MAX_IDEMPOTENCY_KEY = 255


def _type_of(types: dict[str, str], kind: str) -> str:
    return next(event_type for event_type, k in types.items() if k == kind)


@dataclass(frozen=True)
class Write:
    path: str
    topic: Callable[[Any], str]  # Topics -> topic name
    event_type: str | None  # None: chosen by the body's ``outcome`` (payments)
    check: Callable[[ApiBackend, bytes, datetime | None], Any]  # the topic reader's parser
    path_field: str | None = None  # the path parameter that names the data's id
    # A check against what is stored (run in a thread, once the key may see the customer);
    # the topic reader makes it again, so this only answers early.
    check_stored: Callable[[ApiBackend, Any], None] | None = None


def _subscription(backend: ApiBackend, value: bytes, latest: datetime | None) -> Any:
    return parse_subscription(value, set(backend.plans), latest_time=latest)


def _owner(backend: ApiBackend, data: SubscriptionData) -> None:
    check_owner(data, backend.billing_reads().subscription_events(data.subscription_id))


def _plan_change(backend: ApiBackend, data: SubscriptionData) -> None:
    stored = backend.billing_reads().subscription_events(data.subscription_id)
    check_owner(data, stored)  # first: the plan check's message describes the stored plan
    check_plan_change(data, stored, backend.plans)


def _credit(backend: ApiBackend, value: bytes, latest: datetime | None) -> Any:
    return parse_credit(value, latest_time=latest)


def _grant_owner(backend: ApiBackend, data: CreditGrantData) -> None:
    check_grant_owner(data, backend.billing_reads().grant_owner(data.grant_id))


def _new_grant(kind: str) -> Callable[[ApiBackend, CreditGrantData], None]:
    def check(backend: ApiBackend, data: CreditGrantData) -> None:
        reads = backend.billing_reads()
        owner = reads.grant_owner(data.grant_id)
        check_grant_owner(data, owner)  # first: the terms' message describes the stored grant
        if owner is not None:
            check_grant_terms(kind, data, reads.first_grant(data.grant_id))

    return check


def _customer(backend: ApiBackend, value: bytes, latest: datetime | None) -> Any:
    envelope, data = parse_customer(value, latest_time=latest)
    return envelope, "upserted", data


def _credit_note(backend: ApiBackend, value: bytes, latest: datetime | None) -> Any:
    envelope, data = parse_credit_note_request(value, latest_time=latest)
    return envelope, "requested", data


def _payment(backend: ApiBackend, value: bytes, latest: datetime | None) -> Any:
    return parse_payment(value, latest_time=latest)


def _payment_owner(backend: ApiBackend, data: PaymentData) -> None:
    check_payment_owner(data, ClickHouseDunningStore(backend.reader).invoice_customer(data.invoice_id))


WRITES = (
    Write("/v1/customers", lambda t: t.customers, CUSTOMER_UPSERTED, _customer),
    Write(
        "/v1/subscriptions",
        lambda t: t.subscriptions,
        _type_of(SUBSCRIPTION_TYPES, "created"),
        _subscription,
        check_stored=_owner,
    ),
    Write(
        "/v1/subscriptions/{subscription_id}/change",
        lambda t: t.subscriptions,
        _type_of(SUBSCRIPTION_TYPES, "changed"),
        _subscription,
        "subscription_id",
        _plan_change,
    ),
    Write(
        "/v1/subscriptions/{subscription_id}/cancel",
        lambda t: t.subscriptions,
        _type_of(SUBSCRIPTION_TYPES, "canceled"),
        _subscription,
        "subscription_id",
        _owner,
    ),
    Write(
        "/v1/credit-grants",
        lambda t: t.credit_grants,
        _type_of(CREDIT_TYPES, "granted"),
        _credit,
        check_stored=_new_grant("granted"),
    ),
    Write(
        "/v1/credit-purchases",
        lambda t: t.credit_grants,
        _type_of(CREDIT_TYPES, "purchased"),
        _credit,
        check_stored=_new_grant("purchased"),
    ),
    Write(
        "/v1/credit-grants/{grant_id}/void",
        lambda t: t.credit_grants,
        _type_of(CREDIT_TYPES, "voided"),
        _credit,
        "grant_id",
        _grant_owner,
    ),
    Write("/v1/credit-notes", lambda t: t.credit_notes, CREDIT_NOTE_REQUESTED, _credit_note),
    Write("/v1/payments", lambda t: t.payments, None, _payment, check_stored=_payment_owner),
)
PAYMENT_OUTCOMES = {kind: event_type for event_type, kind in PAYMENT_TYPES.items()}


class Refused(Exception):
    def __init__(self, response: web.Response):
        self.response = response


def event_id(key: ApiKey, path: str, idempotency_key: str | None, digest: str) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    # Derived from the data too: two first requests racing on two workers with the same data
    # publish one id, and with other data two ids, never one id for two contents.
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{key.name}|{path}|{idempotency_key}|{digest}"))


def checked_idempotency_key(request: web.Request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is not None and not (0 < len(value) <= MAX_IDEMPOTENCY_KEY and _utf8(value)):
        message = f"1-{MAX_IDEMPOTENCY_KEY} characters of UTF-8"
        raise Refused(json_error(400, "invalid_idempotency_key", message))
    return value


def _utf8(value: str) -> bool:
    # aiohttp hands bytes that are not UTF-8 on as lone surrogates, which neither the event
    # id nor ClickHouse can encode: they were a 500 internal_error, not the caller's 400.
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def data_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def request_data(request: web.Request, write: Write, params: dict[str, str]) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise Refused(json_error(400, "invalid_event", f"the body is not JSON: {exc}", reason="invalid_json")) from None
    if not isinstance(data, dict):
        raise Refused(json_error(400, "invalid_event", "the body must be a JSON object", reason="invalid_data"))
    if write.path_field is not None:
        named = params[write.path_field]
        if data.setdefault(write.path_field, named) != named:
            raise Refused(
                json_error(400, "invalid_event", f"{write.path_field} differs from the path's", reason="invalid_data")
            )
    return data


def install(app: faust.App, guard: Guard, backend: ApiBackend, dunning: DunningService | None) -> None:
    async def invoice_customer(invoice_id: str) -> str | None:
        # The lookup the payment intake makes: the invoice as dunning or the rater stored it.
        return await asyncio.to_thread(ClickHouseDunningStore(backend.reader).invoice_customer, invoice_id)

    # Requests under one idempotency key, one at a time. Two first requests racing both found
    # no record: both were recorded and published, two events for one key (other data was
    # never refused, the same data was sent twice). The second now waits for the first's record
    # and is answered as its retry. Within one worker only: ClickHouse has no insert-if-absent,
    # so two workers can still both record (see :func:`event_id`).
    one_request_per_key: KeyedLocks[tuple[str, str, str]] = KeyedLocks()

    async def accept(request: web.Request, write: Write, params: dict[str, str]) -> web.Response:
        key = guard.key(request, "write")
        if not isinstance(key, ApiKey):
            return key
        try:
            idempotency_key = checked_idempotency_key(request)
            data = await request_data(request, write, params)
        except Refused as refused:
            return refused.response
        if idempotency_key is None:
            return await accept_data(request, write, key, None, data)
        async with one_request_per_key.held((key.name, request.path, idempotency_key)):
            return await accept_data(request, write, key, idempotency_key, data)

    async def accept_data(
        request: web.Request, write: Write, key: ApiKey, idempotency_key: str | None, data: dict[str, Any]
    ) -> web.Response:
        try:
            digest = data_digest(data)
            if idempotency_key is not None:
                first = await asyncio.to_thread(backend.idempotency.first, key.name, request.path, idempotency_key)
                if first is not None:
                    if first.body_digest != digest:
                        message = "this Idempotency-Key was used with other data; use a new key for a new request"
                        return json_error(422, "idempotency_key_reused", message)
                    return await publish_checked(key, write, first.value.encode(), None)
            event_type = write.event_type
            if event_type is None:
                outcome = data.pop("outcome", None)
                event_type = PAYMENT_OUTCOMES.get(outcome) if isinstance(outcome, str) else None
                if event_type is None:
                    message = f"outcome: one of {', '.join(PAYMENT_OUTCOMES)}"
                    raise Refused(json_error(400, "invalid_event", message, reason="invalid_data"))
            now = datetime.now(UTC)
            identity = event_id(key, request.path, idempotency_key, digest)
            named = data.get("customer_id")
            customer = named if isinstance(named, str) else ""
            value = cloud_event(event_type, identity, f"bastionary/api/{key.name}", customer, now.isoformat(), data)
        except Refused as refused:
            return refused.response
        record = None
        if idempotency_key is not None:
            record = IdempotencyRecord(key.name, request.path, idempotency_key, digest, identity, value.decode(), now)
        return await publish_checked(key, write, value, record)

    async def publish_checked(
        key: ApiKey, write: Write, value: bytes, record: IdempotencyRecord | None
    ) -> web.Response:
        """Check ``value`` as the topic's reader will, and the key's customer; record the
        first request of an idempotency key; then publish."""
        now = datetime.now(UTC)
        latest = latest_event_time(now.timestamp(), backend.ctx.settings.max_future_skew)
        try:
            envelope, _, checked = write.check(backend, value, latest)
        except InvalidBillingEvent as error:
            return json_error(400, "invalid_event", str(error), reason=error.code)
        customer = checked.customer_id or ""
        if not customer and hasattr(checked, "invoice_id"):  # a payment may name its invoice only
            customer = await invoice_customer(checked.invoice_id) or ""
        if not key.may_see(customer or None):
            return forbidden_customer(key)
        if write.check_stored is not None:
            try:
                await asyncio.to_thread(write.check_stored, backend, checked)
            except InvalidBillingEvent as error:
                return json_error(400, "invalid_event", str(error), reason=error.code)
        if record is not None:
            # Recorded before it is published: a crash in between is mended by the retry,
            # which finds the record and publishes its event.
            await asyncio.to_thread(backend.idempotency.record, record)
        await backend.publish(write.topic(backend.ctx.topics), customer or getattr(checked, "invoice_id", ""), value)
        return web.json_response({"accepted": True, "id": envelope.id, "type": envelope.type}, status=202)

    for write in WRITES:

        def view(write: Write = write) -> type[faust.web.View]:
            class WriteView(faust.web.View):
                async def post(self, request: Any, **params: str) -> Any:
                    return await accept(request, write, params)

            return WriteView

        app.page(write.path, name=f"write:{write.path}")(view())

    if dunning is not None:
        install_responses(app, guard, dunning)


def install_responses(app: faust.App, guard: Guard, dunning: DunningService) -> None:
    @app.page("/v1/dunning/responses")
    class ResponsesView(faust.web.View):
        async def post(self, request: Any) -> Any:
            key = guard.key(request, "write")
            if not isinstance(key, ApiKey):
                return key
            try:
                event_id, _ = await dunning.accept_response(await request.read(), key.customer)
            except PermissionError:
                return forbidden_customer(key)
            except InvalidBillingEvent as error:
                return json_error(400, "invalid_event", str(error), reason=error.code)
            return self.json({"accepted": True, "id": event_id}, status=202)
