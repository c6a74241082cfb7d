"""The asyncio client. :class:`bastionary.client.Client` is the same client, run for
synchronous callers on a private event loop."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel

from bastionary.client.batcher import Batcher, ErrorHandler
from bastionary.client.errors import BastionaryError
from bastionary.client.models import (
    CreditBalance,
    CreditLedger,
    CreditNote,
    CreditNoteList,
    CreditNoteSummary,
    Customer,
    Decision,
    Invoice,
    InvoiceSummary,
    MeterQuery,
    Subscriptions,
    UpcomingInvoices,
    WriteAccepted,
)
from bastionary.client.transport import EventSender, HttpSender, KafkaSender, sent, with_retries

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Moment = datetime | str | None
TIMEOUT_S = 10.0  # each request's bound, when the caller gives no timeout
# How long a read waits for its answer when the caller gives no timeout: above the API's query
# limit (BASTIONARY_QUERY_TIMEOUT, 30 s by default), so that a read the server stops at its
# limit reaches the caller as the API's answer (400 invalid_query, saying how to narrow it).
READ_TIMEOUT_S = 60.0


def _segment(value: str) -> str:
    """``value`` as one path segment: every reserved character percent-encoded, and the dots of
    ``.`` and ``..`` too (an HTTP client resolves those as the parent directory), so an id such
    as ``../credit-grants/g1/void?`` names itself and never another route."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _text(value: Moment) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _plain(amount: Decimal | str) -> str:
    """A Decimal as a plain decimal string: ``str`` gives ``1E+3`` or ``1E-7`` for some values
    (after ``normalize()``, or arithmetic), which the API refuses as not a decimal."""
    return format(amount, "f") if isinstance(amount, Decimal) else str(amount)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _plain(value)
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


class AsyncClient:
    """``AsyncClient("http://localhost:6066", api_key=...)`` for the HTTP API, or
    ``AsyncClient(bootstrap="kafka:9092")`` to publish usage straight to Kafka (no reads).

    ``track_usage`` queues an event and returns its id; events leave in batches of
    ``batch_size`` or after ``linger`` seconds, are retried ``max_retries`` times with the
    same ids (the pipeline counts a repeat once), and are flushed by :meth:`flush` and
    :meth:`close`. What still fails goes to ``on_error`` (default: logged) and is raised by
    the next :meth:`flush`.

    ``timeout`` bounds each request (default 10 s), and ``read_timeout`` how long a read (GET)
    waits for its answer (default: ``timeout`` when given, else 60 s); a read that times out
    waiting is not asked again.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        bootstrap: str | None = None,
        topic: str = "usage.events",
        source: str = "bastionary-client",
        batch_size: int = 100,
        linger: float = 0.2,
        max_pending: int = 100_000,
        max_retries: int = 5,
        timeout: float | None = None,
        read_timeout: float | None = None,
        on_error: ErrorHandler | None = None,
    ):
        if (url is None) == (bootstrap is None):
            raise ValueError("give either url (the HTTP API) or bootstrap (Kafka), not both")
        self.source = source
        self.max_retries = max_retries
        self._http: httpx.AsyncClient | None = None
        request_timeout = TIMEOUT_S if timeout is None else timeout
        if read_timeout is None:
            # A read waited 10 s (the default timeout) for a query the API lets run 30 s.
            read_timeout = READ_TIMEOUT_S if timeout is None else timeout
        self._read_timeouts = httpx.Timeout(request_timeout, read=read_timeout)
        sender: EventSender
        if url is not None:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            self._http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=request_timeout)
            sender = HttpSender(self._http, max_retries)
        else:
            sender = KafkaSender(str(bootstrap), topic, max_retries, request_timeout)
        self._sender = sender
        self._batcher = Batcher(sender, batch_size, linger, max_pending, on_error)
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- usage in ------------------------------------------------------------------------

    async def track_usage(
        self,
        customer_id: str,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        time: Moment = None,
        source: str | None = None,
    ) -> str:
        """Queue one usage event; returns its id (a fresh UUID when none is given)."""
        if self._closed:
            # As the sync client: taken after close, an event was never sent, only logged.
            raise RuntimeError("the client is closed")
        event = self.usage_event(customer_id, event_type, data, id=id, time=time, source=source)
        await self._batcher.add(event)
        return str(event["id"])

    def usage_event(
        self,
        customer_id: str,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        time: Moment = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """The CloudEvent ``track_usage`` sends; its data is copied (a later change by the
        caller does not change what is sent) and must be JSON (Decimals become strings)."""
        return {
            "specversion": "1.0",
            "id": id or str(uuid.uuid4()),
            "source": source or self.source,
            "type": event_type,
            "subject": customer_id,
            "time": _text(time) or datetime.now(UTC).isoformat(),
            "data": orjson.loads(orjson.dumps(dict(data or {}), default=_json_default)),
        }

    async def flush(self) -> None:
        await self._batcher.flush()

    async def close(self) -> None:
        self._closed = True
        try:
            await self._batcher.close()
        finally:
            await self._sender.close()
            if self._http is not None:
                await self._http.aclose()

    # -- reads ---------------------------------------------------------------------------

    async def usage(
        self,
        meter: str,
        *,
        customer: str | None = None,
        start: Moment = None,
        end: Moment = None,
        window: str | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, str] | None = None,
    ) -> MeterQuery:
        params: list[tuple[str, str]] = [
            (name, value)
            for name, value in (("customer", customer), ("from", _text(start)), ("to", _text(end)), ("window", window))
            if value is not None
        ]
        params += [("group_by", name) for name in group_by]
        params += [(f"filter[{name}]", value) for name, value in (filters or {}).items()]
        return await self._get(MeterQuery, f"/v1/meters/{_segment(meter)}/query", params)

    async def invoices(self, customer: str | None = None) -> list[InvoiceSummary]:
        # customer="" is sent, and refused: dropped, it listed every customer's invoices.
        params = {"customer": customer} if customer is not None else None
        response = await self._request("GET", "/v1/invoices", params=params)
        return _answer(response, lambda body: [InvoiceSummary.model_validate(row) for row in body["invoices"]])

    async def invoice(self, invoice_id: str) -> Invoice:
        return await self._get(Invoice, f"/v1/invoices/{_segment(invoice_id)}")

    async def credit_notes(self, customer: str | None = None) -> list[CreditNoteSummary]:
        params = {"customer": customer} if customer is not None else None
        return (await self._get(CreditNoteList, "/v1/credit-notes", params)).credit_notes

    async def credit_note(self, credit_note_id: str) -> CreditNote:
        return await self._get(CreditNote, f"/v1/credit-notes/{_segment(credit_note_id)}")

    async def request_credit_note(
        self, credit_note_id: str, invoice_id: str, customer_id: str, **fields: Any
    ) -> WriteAccepted:
        """Credit part or all of an invoice: ``amount=``, ``lines=``, neither (all that is
        creditable) or ``void=True``; ``refund_to="balance"`` (default) or ``"payment"``."""
        data = {"credit_note_id": credit_note_id, "invoice_id": invoice_id, "customer_id": customer_id}
        return await self._write("/v1/credit-notes", {**data, **fields})

    async def invoice_html(self, invoice_id: str) -> str:
        return (await self._request("GET", f"/v1/invoices/{_segment(invoice_id)}/html")).text

    async def credit_balance(self, customer_id: str, at: Moment = None) -> CreditBalance:
        params = [("at", text)] if (text := _text(at)) else []
        return await self._get(CreditBalance, f"/v1/customers/{_segment(customer_id)}/credits", params)

    async def credit_ledger(self, customer_id: str) -> CreditLedger:
        return await self._get(CreditLedger, f"/v1/customers/{_segment(customer_id)}/credits/ledger")

    async def subscriptions(self, customer_id: str) -> Subscriptions:
        return await self._get(Subscriptions, f"/v1/customers/{_segment(customer_id)}/subscriptions")

    async def upcoming_invoice(self, customer_id: str) -> UpcomingInvoices:
        return await self._get(UpcomingInvoices, f"/v1/customers/{_segment(customer_id)}/upcoming-invoice")

    async def check(self, customer_id: str, feature: str) -> Decision:
        return await self._get(Decision, f"/v1/customers/{_segment(customer_id)}/entitlements/{_segment(feature)}")

    # -- billing inputs ------------------------------------------------------------------

    async def upsert_customer(self, customer_id: str, **fields: Any) -> WriteAccepted:
        """The whole record: name, email, address (line1, line2, city, postal_code, region,
        country), tax_id, tax_exempt. A field left out is empty afterwards."""
        return await self._write("/v1/customers", {"customer_id": customer_id, **fields})

    async def customer(self, customer_id: str) -> Customer:
        return await self._get(Customer, f"/v1/customers/{_segment(customer_id)}")

    async def create_subscription(
        self, subscription_id: str, customer_id: str, plan: str, start: Moment, **fields: Any
    ) -> WriteAccepted:
        data = {"subscription_id": subscription_id, "customer_id": customer_id, "plan": plan, "start": _text(start)}
        return await self._write("/v1/subscriptions", {**data, **fields})

    async def change_subscription(
        self, subscription_id: str, customer_id: str, plan: str, effective_at: Moment, **fields: Any
    ) -> WriteAccepted:
        data = {"customer_id": customer_id, "plan": plan, "effective_at": _text(effective_at), **fields}
        return await self._write(f"/v1/subscriptions/{_segment(subscription_id)}/change", data)

    async def cancel_subscription(
        self, subscription_id: str, customer_id: str, effective_at: Moment, **fields: Any
    ) -> WriteAccepted:
        data = {"customer_id": customer_id, "effective_at": _text(effective_at), **fields}
        return await self._write(f"/v1/subscriptions/{_segment(subscription_id)}/cancel", data)

    async def grant_credits(
        self,
        grant_id: str,
        customer_id: str,
        amount: Decimal | str,
        currency: str,
        effective_at: Moment,
        **fields: Any,
    ) -> WriteAccepted:
        data = {
            "grant_id": grant_id,
            "customer_id": customer_id,
            "amount": _plain(amount),
            "currency": currency,
            "effective_at": _text(effective_at),
        }
        return await self._write("/v1/credit-grants", {**data, **fields})

    async def purchase_credits(
        self,
        grant_id: str,
        customer_id: str,
        amount: Decimal | str,
        currency: str,
        price_paid: Decimal | str,
        payment_reference: str,
        **fields: Any,
    ) -> WriteAccepted:
        """Paid credit (a top-up): ``amount`` of credit bought for ``price_paid``."""
        data = {
            "grant_id": grant_id,
            "customer_id": customer_id,
            "amount": _plain(amount),
            "currency": currency,
            "price_paid": _plain(price_paid),
            "payment_reference": payment_reference,
        }
        return await self._write("/v1/credit-purchases", {**data, **fields})

    async def void_grant(self, grant_id: str, customer_id: str, effective_at: Moment = None) -> WriteAccepted:
        data = {"customer_id": customer_id, "effective_at": _text(effective_at or datetime.now(UTC))}
        return await self._write(f"/v1/credit-grants/{_segment(grant_id)}/void", data)

    async def record_payment(self, outcome: str, invoice_id: str, **fields: Any) -> WriteAccepted:
        """``outcome``: succeeded, failed or refunded."""
        return await self._write("/v1/payments", {"outcome": outcome, "invoice_id": invoice_id, **fields})

    # -- plumbing ------------------------------------------------------------------------

    async def _write(self, path: str, data: dict[str, Any], idempotency_key: str | None = None) -> WriteAccepted:
        """Every write carries an ``Idempotency-Key`` (fresh unless given), so the retries
        here publish the same event id, and the billing tables keep it once."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4()), "Content-Type": "application/json"}
        body = orjson.dumps({k: v for k, v in data.items() if v is not None}, default=_json_default)
        response = await self._request("POST", path, content=body, headers=headers)
        return _answer(response, WriteAccepted.model_validate)

    async def _get(self, model: type[M], path: str, params: Any = None) -> M:
        return _answer(await self._request("GET", path, params=params), model.model_validate)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        http = self._http
        if http is None:
            raise RuntimeError("this client publishes to Kafka; reads and writes need the HTTP API's url")

        if method == "GET":
            kwargs.setdefault("timeout", self._read_timeouts)

        async def attempt() -> httpx.Response:
            return await sent(http, method, path, **kwargs)

        return await with_retries(attempt, self.max_retries)


def _answer(response: httpx.Response, read: Callable[[Any], T]) -> T:
    """``read`` of a successful answer's JSON. A body that is not the API's answer (a proxy's
    HTML page, a truncated body, another shape) is a :class:`BastionaryError`
    ``invalid_response``, not a JSON or validation error from deep inside the client."""
    try:
        return read(response.json())
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        kind = response.headers.get("Content-Type", "no content type")
        message = f"{response.request.method} {response.request.url.path}: not the API's answer ({kind}): {exc}"
        raise BastionaryError(response.status_code, "invalid_response", message[:500]) from exc
