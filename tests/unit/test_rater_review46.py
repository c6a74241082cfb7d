"""Rater bugs found by the review of 2026-12-07 (forty-sixth session) of the rating worker's
trust guarantees, each confirmed by a script first (/tmp/review46_rater/) and stated here as a
test that failed before its fix."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from structlog.testing import capture_logs

from bastionary import metrics
from bastionary.rating.invoice import invoice_id
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.topics import Topics
from bastionary.worker.services.billing import BillingService, record_invoices
from tests.unit.test_rater import AFTER_FEB, AFTER_JAN, FEB, GRACE, JAN, PRO, TOKENS, FakeBillingStore, at

MAX_REQUEST = 1_000_000  # Faust's producer_max_request_size, which the worker keeps
# 4,000 lines: an invoice document past the producer's max request size.
WIDE = Plan.model_validate(
    {
        "key": "wide",
        "currency": "USD",
        "billing_interval": "P1M",
        "payment_terms": "P14D",
        "prices": [
            {"key": f"seat_{n}", "model": "flat", "amount": "0.01", "description": f"Seat {n} of the floor"}
            for n in range(4000)
        ],
    }
)


class FaustTopic:
    """``topic.send`` as Faust does it over aiokafka: a record past the max request size raises
    when enqueued (``ProducerSendError`` from ``MessageSizeTooLargeError``), or, ``at_broker``,
    is enqueued and its delivery fails with the broker's ``MessageSizeTooLargeError``."""

    def __init__(self, role: str, sent: list[tuple[str, str]], limit: dict[str, Any]):
        self.role, self.sent, self.limit = role, sent, limit

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(value) > self.limit["bytes"]:
            too_large = MessageSizeTooLargeError(f"The message is {len(value)} bytes when serialized")
            if not self.limit["at_broker"]:
                raise ProducerSendError(f"Error while sending: {too_large!r}") from too_large
            done.set_exception(too_large)
            return done
        self.sent.append((self.role, key.decode()))
        done.set_result(None)
        return done


def worker_publish(sent: list[tuple[str, str]], limit: dict[str, Any]) -> Any:
    """The worker's own ``BillingService._publish``, on a Faust context that only sends."""
    topics = Topics("")

    def topic(name: str) -> FaustTopic:
        return FaustTopic("invoices" if name == topics.invoices else "credits", sent, limit)

    service = SimpleNamespace(ctx=SimpleNamespace(topics=topics, topic=topic))
    return lambda role, key, value: BillingService._publish(service, role, key, value)  # type: ignore[arg-type]


def _published(store: FakeBillingStore) -> dict[str, bool]:
    return {f"{d['customer_id']} {d['period_start'][:7]}": s.published for s, d in _documents(store)}


def _documents(store: FakeBillingStore) -> list[tuple[Any, dict[str, Any]]]:
    return [(stored, orjson.loads(stored.document)) for stored in store.invoices.values()]


def _two_customers() -> FakeBillingStore:
    store = FakeBillingStore()
    # Sorted first, so that before the fix its invoice was the first sent and the first republished.
    store.subscribe("sub-0-wide", "cust-wide", plan="wide")
    store.subscribe("sub-1", "cust-1")
    store.use("cust-1", 1000, at(2024, 1, 15))
    return store


async def _refused_invoice_costs_that_invoice(at_broker: bool) -> None:
    store, sent = _two_customers(), []
    limit = {"bytes": MAX_REQUEST, "at_broker": at_broker}
    rater = Rater(store, [PRO, WIDE], [TOKENS], GRACE, worker_publish(sent, limit))

    january = await rater.run_once(AFTER_JAN)
    again = await rater.run_once(AFTER_JAN)
    february = await rater.run_once(AFTER_FEB)

    wide_jan, wide_feb = invoice_id("sub-0-wide", JAN), invoice_id("sub-0-wide", FEB)
    assert [d["customer_id"] for d in january.invoices + february.invoices] == ["cust-1", "cust-1"]
    assert [f.invoice_id for f in january.refused] == [wide_jan]
    assert [f.invoice_id for f in again.refused] == [wide_jan]  # offered again, refused again
    assert sorted(f.invoice_id for f in february.refused) == sorted([wide_jan, wide_feb])
    assert "MessageSizeTooLargeError" in january.refused[0].error
    assert _published(store) == {
        "cust-wide 2024-01": False,
        "cust-1 2024-01": True,
        "cust-wide 2024-02": False,
        "cust-1 2024-02": True,
    }
    # Stored as rated and never recomputed: once the broker takes it, it goes out as stored.
    limit["bytes"] = 10 * MAX_REQUEST
    lifted = await rater.run_once(AFTER_FEB)
    assert (lifted.republished, lifted.refused) == (2, [])
    assert all(_published(store).values())
    assert sorted(key for role, key in sent if role == "invoices") == sorted(
        [wide_jan, wide_feb, invoice_id("sub-1", JAN), invoice_id("sub-1", FEB)]
    )


async def test_an_invoice_the_producer_refuses_for_its_size_costs_that_invoice_not_every_customers_run():
    """A customer's invoice past the producer's max request size (about 1 MB: 4,000 lines)
    raised out of every rating run: first when it was rated, then from the republishing that
    starts each run. No other customer's invoice was published again, and no period of anyone
    was rated after it (cust-1's January stayed unpublished and its February unrated)."""
    await _refused_invoice_costs_that_invoice(at_broker=False)


async def test_an_invoice_the_broker_refuses_for_its_size_costs_that_invoice_not_every_customers_run():
    """As above, the broker refusing the record (its message.max.bytes) on delivery."""
    await _refused_invoice_costs_that_invoice(at_broker=True)


async def test_a_refused_invoice_is_logged_with_its_customer_and_counted_at_every_run():
    store, sent = _two_customers(), []
    rater = Rater(store, [PRO, WIDE], [TOKENS], GRACE, worker_publish(sent, {"bytes": MAX_REQUEST, "at_broker": False}))
    result = await rater.run_once(AFTER_JAN)
    counted = metrics.RATING_FAILED_INVOICES._value.get()

    with capture_logs() as logs:
        record_invoices(result)

    assert metrics.RATING_FAILED_INVOICES._value.get() == counted + 1
    (told,) = [entry for entry in logs if entry["log_level"] == "error"]
    assert "not published" in told["event"]
    assert (told["customer_id"], told["invoice_id"]) == ("cust-wide", invoice_id("sub-0-wide", JAN))
