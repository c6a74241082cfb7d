"""The synchronous client: :class:`AsyncClient` on a private event loop in a daemon thread,
closed (and so flushed) at interpreter exit if the caller did not close it."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from bastionary.client.async_client import AsyncClient, Moment
from bastionary.client.models import (
    CreditBalance,
    CreditLedger,
    CreditNote,
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

T = TypeVar("T")


class Client:
    """``Client("http://localhost:6066", api_key=...)``; the options are :class:`AsyncClient`'s."""

    def __init__(self, url: str | None = None, api_key: str | None = None, **options: Any):
        # track_usage hands events to the loop without waiting for it; this bounds how many
        # wait undelivered (the caller blocks beyond), as AsyncClient's max_pending does.
        self._space = threading.BoundedSemaphore(options.get("max_pending", 100_000))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bastionary-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def build() -> AsyncClient:
            return AsyncClient(url, api_key, **options)

        try:
            self._client = self._run(build())
        except BaseException:
            self._stop_loop()
            raise
        self._client._batcher.bound_by(self._release)
        atexit.register(self.close)

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._space.release()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            # An unclosed loop keeps its selector and self-pipe open: three descriptors per
            # client, until the garbage collector happens to find it.
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush what is queued, then release the connections; safe to call twice."""
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            atexit.unregister(self.close)
            self._stop_loop()

    def track_usage(
        self,
        customer_id: str,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        time: Moment = None,
        source: str | None = None,
    ) -> str:
        """Queue one usage event and return its id at once; blocks only while ``max_pending``
        events wait undelivered."""
        if self._closed:
            raise RuntimeError("the client is closed")
        event = self._client.usage_event(customer_id, event_type, data, id=id, time=time, source=source)
        self._space.acquire()
        self._loop.call_soon_threadsafe(self._client._batcher.put, event)
        return str(event["id"])

    def flush(self) -> None:
        self._run(self._client.flush())

    def usage(
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
        return self._run(
            self._client.usage(
                meter, customer=customer, start=start, end=end, window=window, group_by=group_by, filters=filters
            )
        )

    def invoices(self, customer: str | None = None) -> list[InvoiceSummary]:
        return self._run(self._client.invoices(customer))

    def invoice(self, invoice_id: str) -> Invoice:
        return self._run(self._client.invoice(invoice_id))

    def credit_notes(self, customer: str | None = None) -> list[CreditNoteSummary]:
        return self._run(self._client.credit_notes(customer))

    def credit_note(self, credit_note_id: str) -> CreditNote:
        return self._run(self._client.credit_note(credit_note_id))

    def request_credit_note(
        self, credit_note_id: str, invoice_id: str, customer_id: str, **fields: Any
    ) -> WriteAccepted:
        """Credit part or all of an invoice: ``amount=``, ``lines=``, neither (all that is
        creditable) or ``void=True``; ``refund_to="balance"`` (default) or ``"payment"``."""
        return self._run(self._client.request_credit_note(credit_note_id, invoice_id, customer_id, **fields))

    def invoice_html(self, invoice_id: str) -> str:
        return self._run(self._client.invoice_html(invoice_id))

    def credit_balance(self, customer_id: str, at: Moment = None) -> CreditBalance:
        return self._run(self._client.credit_balance(customer_id, at))

    def credit_ledger(self, customer_id: str) -> CreditLedger:
        return self._run(self._client.credit_ledger(customer_id))

    def subscriptions(self, customer_id: str) -> Subscriptions:
        return self._run(self._client.subscriptions(customer_id))

    def upcoming_invoice(self, customer_id: str) -> UpcomingInvoices:
        return self._run(self._client.upcoming_invoice(customer_id))

    def check(self, customer_id: str, feature: str) -> Decision:
        return self._run(self._client.check(customer_id, feature))

    def upsert_customer(self, customer_id: str, **fields: Any) -> WriteAccepted:
        return self._run(self._client.upsert_customer(customer_id, **fields))

    def customer(self, customer_id: str) -> Customer:
        return self._run(self._client.customer(customer_id))

    def create_subscription(
        self, subscription_id: str, customer_id: str, plan: str, start: Moment, **fields: Any
    ) -> WriteAccepted:
        return self._run(self._client.create_subscription(subscription_id, customer_id, plan, start, **fields))

    def change_subscription(
        self, subscription_id: str, customer_id: str, plan: str, effective_at: Moment, **fields: Any
    ) -> WriteAccepted:
        return self._run(self._client.change_subscription(subscription_id, customer_id, plan, effective_at, **fields))

    def cancel_subscription(
        self, subscription_id: str, customer_id: str, effective_at: Moment, **fields: Any
    ) -> WriteAccepted:
        return self._run(self._client.cancel_subscription(subscription_id, customer_id, effective_at, **fields))

    def grant_credits(
        self, grant_id: str, customer_id: str, amount: Decimal | str, currency: str, effective_at: Moment, **fields: Any
    ) -> WriteAccepted:
        return self._run(self._client.grant_credits(grant_id, customer_id, amount, currency, effective_at, **fields))

    def purchase_credits(
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
        return self._run(
            self._client.purchase_credits(
                grant_id, customer_id, amount, currency, price_paid, payment_reference, **fields
            )
        )

    def void_grant(self, grant_id: str, customer_id: str, effective_at: Moment = None) -> WriteAccepted:
        return self._run(self._client.void_grant(grant_id, customer_id, effective_at))

    def record_payment(self, outcome: str, invoice_id: str, **fields: Any) -> WriteAccepted:
        return self._run(self._client.record_payment(outcome, invoice_id, **fields))
