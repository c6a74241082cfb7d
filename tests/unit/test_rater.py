"""The rater (``rating/rater.py``) over an in-memory billing store and publisher: a closed
period is rated once and published, a crash at each step of store-then-publish leaves
nothing lost, doubled or changed, replays rate nothing, late usage is adjusted on the next
invoice once, and a rater rates only the customers it owns.

``FakeBillingStore`` implements the ``BillingStore`` port with the ClickHouse store's
semantics (``storage/billing.py``): subscriptions built from their events, grants with what
the ledger says was drawn from them, usage per (meter, filter, window) counting only rows
ingested before the cutoff's minute, invoice rows that a later row with the same id replaces
(``published`` 0, then 1), lines and ledger movements keyed as the tables key them, and
``billed`` summed from the stored lines. As there, an invoice row is the commit marker: lines
count in ``billed``, and movements as drawn in ``grants``, only once their invoice's row
exists, and a store zeroes the rows an interrupted earlier store of the same invoices left
that it does not rewrite. Every step can be made to fail.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Context, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.credits.balances import balances
from bastionary.credits.ledger import Funding, Grant, movement_id
from bastionary.metering.meters import Aggregation, Meter
from bastionary.money import round_money
from bastionary.rating.billed import NOTHING_BILLED, Billed, Billing, added_events, stored_windows
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.invoice import Subscription, invoice_id
from bastionary.rating.plans import Plan
from bastionary.rating.ports import RatedInvoice
from bastionary.rating.pricing import Usage
from bastionary.rating.rater import EMPTY, Rater, RatingResult
from bastionary.rating.rows import LedgerRow
from bastionary.rating.schedule import FINAL_ADJUSTMENT, final_adjustment, upcoming_period
from bastionary.rating.service_windows import ServiceWindow, net_windows
from bastionary.rating.subscriptions import SubscriptionEvent, build_subscription
from bastionary.rating.tax import Invoicing, Issuer, TaxProfile, TaxRate, rates_of_document

D = Decimal
_SUMS = Context(prec=76)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


JAN, FEB, MAR, APR, MAY = (at(2024, month, 1) for month in range(1, 6))
GRACE = timedelta(hours=1)
# Each month's invoice is rated once its cutoff (period end + grace) and the settle time have passed.
AFTER_JAN, AFTER_FEB, AFTER_MAR, AFTER_APR = (end + timedelta(hours=2) for end in (FEB, MAR, APR, MAY))

TOKENS = Meter(key="llm_tokens", event_type="llm.completion", aggregation=Aggregation.SUM, value_property="$.tokens")
PRO = Plan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "billing_interval": "P1M",
        "payment_terms": "P14D",
        "prices": [
            {"key": "base", "model": "flat", "amount": 20, "description": "Platform fee"},
            {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"},
        ],
    }
)


class StoreFailed(Exception):
    pass


class PublishFailed(Exception):
    pass


# --- the fakes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One event's meter value: ``time`` decides its period, ``ingested`` which cutoff sees it."""

    meter: str
    customer_id: str
    time: datetime
    ingested: datetime
    value: Decimal
    dimensions: tuple[tuple[str, str], ...] = ()


@dataclass
class StoredInvoice:
    document: str  # the JSON text, as the invoices table holds it
    cutoff: datetime
    published: bool


@dataclass(frozen=True)
class StoredLine:
    subscription_id: str
    line_key: str
    quantity: Decimal
    amount: Decimal  # rounded, as stored
    period_start: datetime  # the period the line bills (an adjustment's: the period it adjusts)
    events: int | None = None  # a percentage price's (invoice_lines.events)
    windows: tuple[ServiceWindow, ...] = ()  # a prorated fee's spans (invoice_lines.windows)


@dataclass
class FakeBillingStore:
    """``bastionary.rating.ports.BillingStore`` in memory (see the module docstring)."""

    events: list[SubscriptionEvent] = field(default_factory=list)
    granted: list[Grant] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    invoices: dict[str, StoredInvoice] = field(default_factory=dict)
    lines: dict[tuple[str, int], StoredLine] = field(default_factory=dict)  # (invoice id, line no)
    ledger: dict[str, LedgerRow] = field(default_factory=dict)  # movement id
    topups: dict[str, dict[str, tuple[Decimal, Decimal]]] = field(default_factory=dict)
    terms: dict[str, CustomerTerms] = field(default_factory=dict)
    # Crash points: store_invoices raises before writing "lines", "ledger" or "invoices"
    # (from its ``fail_store_from_call``-th call on); mark_published raises before writing anything.
    fail_store_before: str | None = None
    fail_store_from_call: int = 1
    fail_mark_published: bool = False
    store_calls: int = 0
    usage_queries: list[tuple[str, tuple[tuple[str, str], ...], datetime, datetime, datetime]] = field(
        default_factory=list
    )

    # -- inputs ------------------------------------------------------------------------

    def subscribe(self, subscription_id: str, customer_id: str, start: datetime = JAN, plan: str = "pro") -> None:
        self.events.append(SubscriptionEvent(subscription_id, customer_id, "created", plan, start, None, start))

    def grant(
        self,
        grant_id: str,
        customer_id: str,
        amount: str,
        expires_at: datetime | None = None,
        funding: Funding = "promotional",
        priority: int = 1,
    ) -> None:
        start = JAN - timedelta(days=1)
        self.granted.append(Grant(grant_id, customer_id, D(amount), "USD", priority, start, expires_at, None, funding))

    def use(self, customer_id: str, tokens: int, time: datetime, ingested: datetime | None = None) -> None:
        self.readings.append(Reading("llm_tokens", customer_id, time, ingested or time, D(tokens)))

    # -- the port ----------------------------------------------------------------------

    def unpublished_documents(self) -> list[str]:
        return [stored.document for stored in self.invoices.values() if not stored.published]

    def mark_published(self, invoices: list[tuple[dict[str, Any], datetime]]) -> None:
        if self.fail_mark_published:
            raise StoreFailed("mark_published")
        for data, cutoff in invoices:
            self.invoices[data["invoice_id"]] = StoredInvoice(orjson.dumps(data).decode(), cutoff, True)

    def invoice_ids(self, subscription_id: str | None = None) -> set[str]:
        if subscription_id is None:
            return set(self.invoices)
        return {
            i for i in self.invoices if orjson.loads(self.invoices[i].document)["subscription_id"] == subscription_id
        }

    def subscriptions(self, plans: Mapping[str, Plan], customer: str | None = None) -> list[Subscription]:
        by_id: dict[str, list[SubscriptionEvent]] = defaultdict(list)
        for event in sorted(self.events, key=lambda e: (e.subscription_id, e.effective_at, e.kind == "canceled")):
            by_id[event.subscription_id].append(event)
        built = (build_subscription(sub_id, events, plans) for sub_id, events in by_id.items())
        return [sub for sub in built if sub is not None and customer in (None, sub.customer_id)]

    def grants_as_of(
        self, moment: datetime | None, customer: str | None = None
    ) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]:
        grants, drawn = self.grants()  # the fake keeps no issue times: as of now
        return {c: g for c, g in grants.items() if customer in (None, c)}, drawn

    def grants(self) -> tuple[dict[str, list[Grant]], dict[str, Decimal]]:
        by_customer: dict[str, list[Grant]] = defaultdict(list)
        for grant in self.granted:
            by_customer[grant.customer_id].append(grant)
        for row in self.ledger.values():  # a carried balance, once its invoice is stored
            if row.kind == "carried" and row.invoice_id in self.invoices:
                carried = Grant(
                    row.grant_id,
                    row.customer_id,
                    row.amount,
                    row.currency,
                    row.priority,
                    row.effective_at,
                    funding="carried",
                )
                by_customer[row.customer_id].append(carried)
        drawn: dict[str, Decimal] = defaultdict(Decimal)
        for row in self.ledger.values():
            if row.kind in ("applied", "expired") and row.invoice_id in self.invoices:
                drawn[row.grant_id] += row.amount
        return dict(by_customer), dict(drawn)

    def customer_terms(self, customer: str | None = None) -> dict[str, CustomerTerms]:
        terms = {c: t for c, t in self.terms.items() if customer in (None, c)}
        for name, rules in self.topups.items():
            if customer in (None, name):
                terms[name] = replace(terms.get(name, CustomerTerms()), topups=rules)
        return terms

    def usage_by_customer(
        self,
        meter: Meter,
        filters: dict[str, str],
        start: datetime,
        end: datetime,
        as_of: datetime,
        customer: str | None = None,
    ) -> dict[str, Usage]:
        assert meter.aggregation is Aggregation.SUM, "the fake sums; other aggregations are the rollups' business"
        self.usage_queries.append((meter.key, tuple(sorted(filters.items())), start, end, as_of))
        out: dict[str, Usage] = {}
        for r in self.readings:
            minute, ingested_minute = (t.replace(second=0, microsecond=0) for t in (r.time, r.ingested))
            dimensions = dict(r.dimensions)
            if (
                r.meter == meter.key
                and start <= minute < end
                and ingested_minute < as_of
                and customer in (None, r.customer_id)
                and all(dimensions.get(k) == v for k, v in filters.items())
            ):
                before = out.get(r.customer_id, Usage(D(0), 0))
                # ClickHouse sums Decimal(38, 9) exactly; the default context keeps 28 digits.
                out[r.customer_id] = Usage(_SUMS.add(before.quantity, r.value), before.events + 1)
        return out

    def billed(self, subscription_id: str) -> Billed:
        out: Billed = {}
        for (invoice, _), line in self.lines.items():
            if line.subscription_id == subscription_id and invoice in self.invoices:
                before = out.get((line.period_start, line.line_key), NOTHING_BILLED)
                # As ClickHouseBillingStore.billed: known only if every line billing something has them.
                known = before.windows is not None and (line.windows or not (line.quantity or line.amount))
                out[(line.period_start, line.line_key)] = Billing(
                    before.quantity + line.quantity,
                    before.amount + line.amount,
                    added_events(before.events, line.events),
                    net_windows((*before.windows, *line.windows)) if known else None,
                )
        return out

    def rates_then(self, customer_id: str, subscription_id: str) -> dict[datetime, list[TaxRate]]:
        out = {}
        for stored in self.invoices.values():
            data = orjson.loads(stored.document)
            if data["subscription_id"] == subscription_id and data["kind"] == "period":
                rates = rates_of_document(data)
                if rates is not None:
                    out[datetime.fromisoformat(data["period_start"])] = rates
        return out

    def rates_first_billed(self, customer_id: str, subscription_id: str) -> dict[tuple[datetime, str], list[TaxRate]]:
        documents = {i: orjson.loads(stored.document) for i, stored in self.invoices.items()}
        first: dict[tuple[datetime, str], tuple[str, str]] = {}  # -> (issued_at, invoice id)
        for (invoice, _), line in self.lines.items():
            data = documents.get(invoice)
            if data is None or data["subscription_id"] != subscription_id or line.amount <= 0:
                continue
            key = (line.period_start, line.line_key)
            first[key] = min(first.get(key, (data["issued_at"], invoice)), (data["issued_at"], invoice))
        out = {}
        for key, (_, invoice) in first.items():
            rates = rates_of_document(documents[invoice])
            if rates is not None:
                out[key] = rates
        return out

    def store_invoices(self, rated: list[RatedInvoice]) -> None:
        """Lines, then ledger movements, then the invoice rows (unpublished), as ClickHouse does;
        rows of these invoices an interrupted store left and this one does not rewrite, zeroed."""
        self.store_calls += 1
        counts = {item.invoice.invoice_id: len(item.lines) for item in rated}
        movements = {row.movement_id for item in rated for row in item.ledger}
        stale_lines = [key for key in self.lines if key[0] in counts and key[1] >= counts[key[0]]]
        stale_movements = [
            row
            for row in self.ledger.values()
            if row.invoice_id in counts
            and row.kind in ("applied", "expired", "carried")
            and row.movement_id not in movements
        ]
        self._maybe_fail("lines")
        for item in rated:
            data = item.invoice.document()
            period_start = datetime.fromisoformat(data["period_start"])
            for n, line in enumerate(item.lines):
                amount = round_money(line.amount, data["currency"])
                # Decimal(38, 9), which the ClickHouse client truncates to.
                quantity = line.quantity.quantize(D("0.000000001"), rounding=ROUND_DOWN, context=Context(prec=60))
                self.lines[(data["invoice_id"], n)] = StoredLine(
                    data["subscription_id"],
                    line.line_key,
                    quantity,
                    amount,
                    line.period_start or period_start,
                    line.events,
                    stored_windows(line.windows, data["currency"]),
                )
        for key in stale_lines:
            self.lines[key] = replace(self.lines[key], line_key="", quantity=D(0), amount=D(0), events=None, windows=())
        self._maybe_fail("ledger")
        for item in rated:
            self.ledger.update((row.movement_id, row) for row in item.ledger)
        for row in stale_movements:
            self.ledger[row.movement_id] = row._replace(amount=D(0))
        self._maybe_fail("invoices")
        for item in rated:
            data = item.invoice.document()
            self.invoices[data["invoice_id"]] = StoredInvoice(orjson.dumps(data).decode(), item.cutoff, False)

    def _maybe_fail(self, step: str) -> None:
        if self.fail_store_before == step and self.store_calls >= self.fail_store_from_call:
            raise StoreFailed(f"before {step}")

    # -- for the tests -----------------------------------------------------------------

    def document(self, invoice: str) -> dict[str, Any]:
        return orjson.loads(self.invoices[invoice].document)


@dataclass
class FakePublisher:
    """The rater's ``publish``: records every event delivered; can be made to fail, either
    when enqueuing (the call raises) or on delivery (the returned future fails)."""

    delivered: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (role, key, event)
    calls: int = 0
    fail_after: int | None = None  # calls beyond this many fail ...
    fail_mode: str = "enqueue"  # ... by raising ("enqueue") or with a failed future ("delivery")

    def fail(self, after: int = 0, mode: str = "enqueue") -> None:
        self.fail_after, self.fail_mode = self.calls + after, mode

    def heal(self) -> None:
        self.fail_after = None

    async def __call__(self, role: str, key: str, value: bytes) -> Awaitable[object]:
        self.calls += 1
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.fail_after is not None and self.calls > self.fail_after:
            if self.fail_mode == "enqueue":
                raise PublishFailed(f"enqueue {role} {key}")
            done.set_exception(PublishFailed(f"deliver {role} {key}"))
            return done
        self.delivered.append((role, key, orjson.loads(value)))
        done.set_result(None)
        return done

    def events(self, role: str) -> list[dict[str, Any]]:
        return [event for r, _, event in self.delivered if r == role]

    def invoices(self) -> list[dict[str, Any]]:
        return [event["data"] for event in self.events("invoices")]


def rater(
    store: FakeBillingStore, publish: FakePublisher, owns: Callable[[str], bool] = lambda c: True, **options: Any
) -> Rater:
    return Rater(store, [PRO], [TOKENS], GRACE, publish, owns, **options)


def one_customer(tokens: int = 1000) -> FakeBillingStore:
    """cust-1 on pro from January 1st, with ``tokens`` used (and ingested) in January."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.use("cust-1", tokens, at(2024, 1, 15))
    return store


def amounts(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(line["price_key"], line["quantity"], line["amount"]) for line in document["lines"]]


JAN_INVOICE = invoice_id("sub-1", JAN)


# --- a closed period -------------------------------------------------------------------


async def test_a_closed_period_is_rated_stored_and_published():
    store, publish = one_customer(), FakePublisher()
    result = await rater(store, publish).run_once(AFTER_JAN)

    (document,) = result.invoices
    cutoff = FEB + GRACE
    assert document["invoice_id"] == JAN_INVOICE
    assert (document["customer_id"], document["subscription_id"], document["plan"]) == ("cust-1", "sub-1", "pro")
    assert (document["period_start"], document["period_end"]) == (JAN.isoformat(), FEB.isoformat())
    assert document["issued_at"] == cutoff.isoformat()
    assert document["due_at"] == (cutoff + timedelta(days=14)).isoformat()
    assert amounts(document) == [("base", "1", "20.00"), ("tokens", "1000", "10.00")]
    assert (document["subtotal"], document["credits_applied"], document["total"]) == ("30.00", "0.00", "30.00")
    assert result.republished == 0
    # Stored, with its cutoff, and marked published once delivered.
    assert store.invoices[JAN_INVOICE] == StoredInvoice(orjson.dumps(document).decode(), cutoff, True)
    assert store.billed("sub-1") == {
        # The fee's span: January whole, at 20.00 (invoice_lines.windows).
        (JAN, "pro:base"): Billing(D(1), D("20.00"), windows=(ServiceWindow(JAN, FEB, D(1), D("20.00")),)),
        (JAN, "pro:tokens"): Billing(D(1000), D("10.00"), windows=(ServiceWindow(JAN, FEB, D(1000), D("10.00")),)),
    }
    # One invoice.finalized event: the document, keyed and identified by the invoice id.
    ((role, key, event),) = publish.delivered
    assert (role, key) == ("invoices", JAN_INVOICE)
    assert (event["type"], event["id"], event["subject"], event["time"]) == (
        "bastionary.invoice.finalized.v1",
        JAN_INVOICE,
        "cust-1",
        cutoff.isoformat(),
    )
    assert event["data"] == document


@pytest.mark.parametrize(
    "now",
    [FEB, FEB + GRACE - timedelta(seconds=1), FEB + GRACE + timedelta(seconds=4)],
    ids=["at the period end", "before the cutoff", "within the settle time"],
)
async def test_nothing_is_rated_before_the_cutoff_and_the_settle_time(now):
    store, publish = one_customer(), FakePublisher()
    assert await rater(store, publish).run_once(now) == RatingResult([])
    assert await rater(store, publish).run_once(FEB + GRACE + timedelta(seconds=5)) != RatingResult([])
    assert [d["invoice_id"] for d in publish.invoices()] == [JAN_INVOICE]


async def test_paid_credit_is_drawn_after_promotional_credit_whatever_its_priority():
    store, publish = one_customer(), FakePublisher()
    store.grant("g-paid", "cust-1", "50.00", funding="paid", priority=0)
    store.grant("g-promo", "cust-1", "10.00", priority=500)
    (document,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    assert document["credit_allocations"] == [
        {"grant_id": "g-promo", "amount": "10.00", "funding": "promotional"},
        {"grant_id": "g-paid", "amount": "20.00", "funding": "paid"},
    ]
    assert [e["data"]["funding"] for e in publish.events("credits")] == ["promotional", "paid"]


async def test_an_auto_topup_is_requested_once_per_crossing_of_the_threshold():
    store, publish = one_customer(), FakePublisher()  # 30.00 for January, then 20.00 a month
    store.grant("g-paid", "cust-1", "100.00", funding="paid")
    store.topups["cust-1"] = {"USD": (D("60"), D("100.00"))}
    requests = []
    for moment in (AFTER_JAN, AFTER_FEB, AFTER_MAR):  # balance 70, 50 (crossed), 30 (still below)
        (document,) = (await rater(store, publish).run_once(moment)).invoices
        requests.append(document["topup_requested"])
    assert requests == [[], [{"currency": "USD", "threshold": "60.00", "amount": "100.00", "balance": "50.00"}], []]
    # The payment system buys 30.00: back at the threshold; April's draw crosses it again.
    store.grant("g-bought", "cust-1", "30.00", funding="paid")
    (april,) = (await rater(store, publish).run_once(AFTER_APR)).invoices
    assert april["topup_requested"] == [
        {"currency": "USD", "threshold": "60.00", "amount": "100.00", "balance": "40.00"}
    ]

    topups = [e for e in publish.events("credits") if e["type"] == "bastionary.credit.topup_requested.v1"]
    assert [e["data"]["invoice_id"] for e in topups] == [invoice_id("sub-1", FEB), invoice_id("sub-1", APR)]
    assert len({e["id"] for e in topups}) == 2
    assert topups[0]["data"] == {
        "customer_id": "cust-1",
        "invoice_id": invoice_id("sub-1", FEB),
        "currency": "USD",
        "threshold": "60.00",
        "amount": "100.00",
        "balance": "50.00",
    }
    assert await rater(store, publish).run_once(AFTER_APR) == RatingResult([])  # nothing asked twice


async def test_an_expiry_that_takes_the_balance_below_the_threshold_asks_for_a_top_up():
    """Paid 40.00 and promotional 100.00 expiring 20 February; January draws 30.00 of the promo
    (110.00 left), February lapses its 70.00 and draws 20.00: 20.00, below 50.00. Until
    2026-12-07 the balance before February's invoice was taken at its period end, without the
    expired grant (40.00, already below), so no invoice ever asked."""
    store, publish = one_customer(), FakePublisher()  # 30.00 for January, then 20.00 a month
    store.grant("g-paid", "cust-1", "40.00", funding="paid")
    store.grant("g-promo", "cust-1", "100.00", expires_at=at(2024, 2, 20))
    store.topups["cust-1"] = {"USD": (D("50"), D("100.00"))}
    requests = []
    for moment in (AFTER_JAN, AFTER_FEB, AFTER_MAR):
        (document,) = (await rater(store, publish).run_once(moment)).invoices
        requests.append(document["topup_requested"])
    assert requests == [[], [{"currency": "USD", "threshold": "50.00", "amount": "100.00", "balance": "20.00"}], []]


async def test_no_topup_rule_for_the_currency_no_request():
    store, publish = one_customer(), FakePublisher()
    store.grant("g-paid", "cust-1", "40.00", funding="paid")
    store.topups["cust-1"] = {"EUR": (D("50"), D("100.00"))}
    (document,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices
    assert document["topup_requested"] == []


async def test_credits_are_applied_expired_and_published_as_credit_events():
    store, publish = one_customer(), FakePublisher()
    store.grant("g-promo", "cust-1", "12.50")
    store.grant("g-trial", "cust-1", "5.00", expires_at=at(2024, 1, 20))  # unusable at the period end
    (document,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    assert (document["subtotal"], document["credits_applied"], document["total"]) == ("30.00", "12.50", "17.50")
    assert document["credit_allocations"] == [{"grant_id": "g-promo", "amount": "12.50", "funding": "promotional"}]
    assert document["credits_expired"] == [{"grant_id": "g-trial", "amount": "5.00", "currency": "USD"}]
    applied, expired = movement_id("applied", "g-promo", JAN_INVOICE), movement_id("expired", "g-trial", JAN_INVOICE)
    assert {m: (row.kind, row.amount, row.invoice_id) for m, row in store.ledger.items()} == {
        applied: ("applied", D("12.50"), JAN_INVOICE),
        expired: ("expired", D("5.00"), JAN_INVOICE),
    }
    assert [(role, key) for role, key, _ in publish.delivered] == [
        ("invoices", JAN_INVOICE),
        ("credits", "cust-1"),
        ("credits", "cust-1"),
    ]
    credit_events = publish.events("credits")
    assert [(e["type"], e["id"]) for e in credit_events] == [
        ("bastionary.credit.applied.v1", applied),
        ("bastionary.credit.expired.v1", expired),
    ]
    assert credit_events[0]["data"] == {
        "grant_id": "g-promo",
        "customer_id": "cust-1",
        "invoice_id": JAN_INVOICE,
        "amount": "12.50",
        "currency": "USD",
        "funding": "promotional",
    }
    # Drawn is drawn: February finds nothing left.
    (february,) = (await rater(store, publish).run_once(AFTER_FEB)).invoices
    assert (february["credits_applied"], february["credit_allocations"], february["credits_expired"]) == (
        "0.00",
        [],
        [],
    )


async def test_a_grant_in_another_currency_expires_in_its_own_currency():
    store, publish = one_customer(), FakePublisher()
    store.granted.append(Grant("g-eur", "cust-1", D("8.00"), "EUR", 1, JAN - timedelta(days=1), at(2024, 1, 20)))
    (document,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    assert document["credits_expired"] == [{"grant_id": "g-eur", "amount": "8.00", "currency": "EUR"}]
    assert store.ledger[movement_id("expired", "g-eur", JAN_INVOICE)].currency == "EUR"
    (event,) = publish.events("credits")
    assert (event["type"], event["data"]["amount"]) == ("bastionary.credit.expired.v1", "8.00")
    assert event["data"]["currency"] == "EUR"


async def test_usage_is_read_once_per_meter_window_and_cutoff_for_every_customer():
    store, publish = FakeBillingStore(), FakePublisher()
    for n in (1, 2, 3):
        store.subscribe(f"sub-{n}", f"cust-{n}")
        store.use(f"cust-{n}", 100 * n, at(2024, 1, 10))
    result = await rater(store, publish).run_once(AFTER_JAN)

    assert [amounts(d)[1][1:] for d in result.invoices] == [("100", "1.00"), ("200", "2.00"), ("300", "3.00")]
    assert store.usage_queries == [("llm_tokens", (), JAN, FEB, FEB + GRACE)]


async def test_periods_are_rated_in_order_and_stored_batch_by_batch():
    store, publish = FakeBillingStore(), FakePublisher()
    for n in (3, 1, 2):
        store.subscribe(f"sub-{n}", f"cust-{n}")
    result = await rater(store, publish, batch_size=2).run_once(AFTER_FEB)

    expected = [invoice_id(f"sub-{n}", start) for start in (JAN, FEB) for n in (1, 2, 3)]
    assert [d["invoice_id"] for d in result.invoices] == expected
    assert [d["invoice_id"] for d in publish.invoices()] == expected
    assert store.store_calls == 3
    assert all(stored.published for stored in store.invoices.values())


# --- replays ---------------------------------------------------------------------------


async def test_a_second_run_rates_and_publishes_nothing():
    store, publish = one_customer(), FakePublisher()
    the_rater = rater(store, publish)
    first = await the_rater.run_once(AFTER_JAN)

    assert await the_rater.run_once(AFTER_JAN) == RatingResult([])
    assert await the_rater.run_once(AFTER_JAN + timedelta(days=3)) == RatingResult([])
    assert await rater(store, publish).run_once(AFTER_JAN) == RatingResult([])  # a restarted rater too
    assert len(first.invoices) == 1 and len(publish.delivered) == 1 and list(store.invoices) == [JAN_INVOICE]
    assert store.store_calls == 1


async def test_a_rated_period_is_never_rated_again_even_if_its_usage_changes():
    store, publish = one_customer(), FakePublisher()
    await rater(store, publish).run_once(AFTER_JAN)
    stored = store.invoices[JAN_INVOICE]
    store.use("cust-1", 500, at(2024, 1, 20), ingested=at(2024, 1, 20))  # landed late, ingested in time

    assert await rater(store, publish).run_once(AFTER_JAN) == RatingResult([])
    assert store.invoices[JAN_INVOICE] == stored


# --- crashes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "mode"),
    [(0, "enqueue"), (0, "delivery"), (1, "enqueue"), (1, "delivery")],
    ids=["invoice not enqueued", "invoice not delivered", "credit event not enqueued", "credit event not delivered"],
)
async def test_publish_failing_after_the_store_republishes_the_stored_document_as_is(after, mode):
    store, publish = one_customer(), FakePublisher()
    store.grant("g-promo", "cust-1", "12.50")
    publish.fail(after, mode)
    with pytest.raises(PublishFailed):
        await rater(store, publish).run_once(AFTER_JAN)

    stored = store.invoices[JAN_INVOICE]
    assert not stored.published and store.unpublished_documents() == [stored.document]
    ledger = dict(store.ledger)
    # The inputs change before the next run: were the invoice rated again, it would differ.
    store.use("cust-1", 700, at(2024, 1, 25), ingested=at(2024, 1, 25))
    store.grant("g-later", "cust-1", "100.00")
    publish.heal()
    result = await rater(store, publish).run_once(AFTER_JAN)

    assert (result.invoices, result.republished) == ([], 1)
    republished = [event for event in publish.events("invoices") if event["id"] == JAN_INVOICE][-1]
    assert orjson.dumps(republished["data"]).decode() == stored.document  # the same bytes, not recomputed
    assert amounts(republished["data"])[1] == ("tokens", "1000", "10.00")
    assert store.invoices[JAN_INVOICE] == StoredInvoice(stored.document, stored.cutoff, True)
    assert store.ledger == ledger and store.store_calls == 1
    # Credit events go out again too (consumers dedupe on their ids), and nothing is left over.
    assert {e["id"] for e in publish.events("credits")} == {movement_id("applied", "g-promo", JAN_INVOICE)}
    assert await rater(store, publish).run_once(AFTER_JAN) == RatingResult([])


async def test_marking_published_failing_republishes_the_stored_document_next_run():
    store, publish = one_customer(), FakePublisher()
    store.fail_mark_published = True
    with pytest.raises(StoreFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    (first,) = publish.invoices()
    store.fail_mark_published = False

    result = await rater(store, publish).run_once(AFTER_JAN)

    assert (result.invoices, result.republished) == ([], 1)
    assert publish.invoices() == [first, first]  # the same invoice twice: consumers dedupe on its id
    assert store.invoices[JAN_INVOICE].published


async def test_store_failing_before_anything_is_stored_rates_the_same_invoice_next_run():
    control_store, control_publish = one_customer(), FakePublisher()
    control_store.grant("g-promo", "cust-1", "12.50")
    (expected,) = (await rater(control_store, control_publish).run_once(AFTER_JAN)).invoices

    store, publish = one_customer(), FakePublisher()
    store.grant("g-promo", "cust-1", "12.50")
    store.fail_store_before = "lines"
    with pytest.raises(StoreFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    assert (store.invoices, store.lines, store.ledger, publish.delivered) == ({}, {}, {}, [])

    store.fail_store_before = None
    result = await rater(store, publish).run_once(AFTER_JAN)

    assert result.invoices == [expected]  # same id, same content
    assert publish.delivered == control_publish.delivered
    assert store.invoices == control_store.invoices
    assert store.billed("sub-1") == control_store.billed("sub-1")
    assert {m: (r.kind, r.amount) for m, r in store.ledger.items()} == {
        m: (r.kind, r.amount) for m, r in control_store.ledger.items()
    }


async def test_store_failing_between_the_ledger_and_the_invoice_rows_rates_the_same_invoice_next_run():
    control_store, control_publish = one_customer(), FakePublisher()
    control_store.grant("g-promo", "cust-1", "12.50")
    (expected,) = (await rater(control_store, control_publish).run_once(AFTER_JAN)).invoices

    store, publish = one_customer(), FakePublisher()
    store.grant("g-promo", "cust-1", "12.50")
    store.fail_store_before = "invoices"
    with pytest.raises(StoreFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    store.fail_store_before = None
    (document,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    assert (document["credits_applied"], document["total"]) == (expected["credits_applied"], expected["total"])
    assert document == expected
    assert store.ledger.keys() == control_store.ledger.keys()


# --- late usage ------------------------------------------------------------------------


async def test_late_usage_is_adjusted_on_the_next_invoice_once():
    store, publish = one_customer(tokens=1000), FakePublisher()
    (january,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices
    assert amounts(january)[1] == ("tokens", "1000", "10.00")

    # 300 January tokens reach us after January's cutoff; 200 are February's own.
    store.use("cust-1", 300, at(2024, 1, 31, 23, 59), ingested=FEB + GRACE)
    store.use("cust-1", 200, at(2024, 2, 10))
    (february,) = (await rater(store, publish).run_once(AFTER_FEB)).invoices

    assert amounts(february) == [("base", "1", "20.00"), ("tokens", "200", "2.00"), ("tokens", "300", "3.00")]
    adjustment = february["lines"][2]
    assert adjustment["adjusts_period_start"] == JAN.isoformat()
    assert adjustment["description"] == "Adjustment: late usage for 2024-01-01 00:00–2024-02-01 00:00 (tokens)"
    assert february["subtotal"] == "25.00"
    assert store.document(JAN_INVOICE) == january  # the January invoice itself never changes
    assert publish.invoices() == [january, february]

    # 50 more January tokens, later still: March adjusts by what was not billed yet (50, not 350).
    store.use("cust-1", 50, at(2024, 1, 31), ingested=MAR + GRACE + timedelta(days=2))
    (march,) = (await rater(store, publish).run_once(AFTER_MAR)).invoices
    assert amounts(march) == [("base", "1", "20.00"), ("tokens", "0", "0.00"), ("tokens", "50", "0.50")]
    assert march["lines"][2]["adjusts_period_start"] == JAN.isoformat()

    # Nothing else arrived: April adjusts nothing, for January or any other month.
    (april,) = (await rater(store, publish).run_once(AFTER_APR)).invoices
    assert amounts(april) == [("base", "1", "20.00"), ("tokens", "0", "0.00")]
    # The late line replaced the span's 1,000 tokens with 1,350: one span still billed.
    window = ServiceWindow(JAN, FEB, D(1350), D("13.50"))
    assert store.billed("sub-1")[(JAN, "pro:tokens")] == Billing(D(1350), D("13.50"), windows=(window,))


async def test_late_usage_is_adjusted_when_the_periods_are_rated_in_separate_batches():
    store, publish = one_customer(tokens=1000), FakePublisher()
    store.use("cust-1", 300, at(2024, 1, 31), ingested=FEB + GRACE)
    result = await rater(store, publish, batch_size=1).run_once(AFTER_FEB)  # January and February at once

    january, february = result.invoices
    assert amounts(january)[1] == ("tokens", "1000", "10.00")
    assert amounts(february)[1:] == [("tokens", "0", "0.00"), ("tokens", "300", "3.00")]


async def test_late_usage_is_adjusted_when_the_periods_are_rated_in_the_same_batch():
    store, publish = one_customer(tokens=1000), FakePublisher()
    store.use("cust-1", 300, at(2024, 1, 31), ingested=FEB + GRACE)
    result = await rater(store, publish).run_once(AFTER_FEB)  # January and February at once

    january, february = result.invoices
    assert amounts(january)[1] == ("tokens", "1000", "10.00")
    assert amounts(february)[1:] == [("tokens", "0", "0.00"), ("tokens", "300", "3.00")]


# --- ownership -------------------------------------------------------------------------


async def test_a_rater_rates_only_the_customers_it_owns():
    store, publish = one_customer(), FakePublisher()
    store.subscribe("sub-2", "cust-2")
    store.use("cust-2", 400, at(2024, 1, 3))
    result = await rater(store, publish, owns=lambda customer: customer == "cust-1").run_once(AFTER_JAN)

    assert [d["customer_id"] for d in result.invoices] == ["cust-1"]
    assert list(store.invoices) == [JAN_INVOICE]
    assert [d["customer_id"] for d in publish.invoices()] == ["cust-1"]

    result = await rater(store, publish, owns=lambda customer: customer == "cust-2").run_once(AFTER_JAN)
    assert [d["invoice_id"] for d in result.invoices] == [invoice_id("sub-2", JAN)]


async def test_a_rater_republishes_only_the_stored_documents_of_customers_it_owns():
    store, publish = one_customer(), FakePublisher()
    store.subscribe("sub-2", "cust-2")
    publish.fail()
    with pytest.raises(PublishFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    publish.heal()
    cust_2_invoice = invoice_id("sub-2", JAN)
    assert len(store.unpublished_documents()) == 2

    first = await rater(store, publish, owns=lambda customer: customer == "cust-1").run_once(AFTER_JAN)
    assert (first.invoices, first.republished) == ([], 1)
    assert [d["invoice_id"] for d in publish.invoices()] == [JAN_INVOICE]
    assert store.unpublished_documents() == [store.invoices[cust_2_invoice].document]

    second = await rater(store, publish, owns=lambda customer: customer == "cust-2").run_once(AFTER_JAN)
    assert (second.invoices, second.republished) == ([], 1)
    assert store.unpublished_documents() == []


# --- catching up: the batch size changes nothing ---------------------------------------

AFTER_EACH_MONTH = (AFTER_JAN, AFTER_FEB, AFTER_MAR, AFTER_APR)
MONTHS = (JAN, FEB, MAR, APR, MAY)


def cutoff_of(month: int) -> datetime:
    """The cutoff of the period that starts at ``MONTHS[month]``."""
    return MONTHS[month + 1] + GRACE


def outcome(store: FakeBillingStore, publish: FakePublisher, invoices: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything a run leaves that must not depend on how it was batched."""
    return {
        "invoices": invoices,
        "delivered": publish.delivered,
        "stored": {i: (s.document, s.cutoff, s.published) for i, s in store.invoices.items()},
        "lines": store.lines,
        "ledger": {m: row._replace(recorded_at=JAN) for m, row in store.ledger.items()},
        "billed": {sub: store.billed(sub) for sub in {e.subscription_id for e in store.events}},
    }


async def month_by_month(build: Callable[[], FakeBillingStore]) -> dict[str, Any]:
    store, publish = build(), FakePublisher()
    invoices: list[dict[str, Any]] = []
    for now in AFTER_EACH_MONTH:
        invoices.extend((await rater(store, publish).run_once(now)).invoices)
    return outcome(store, publish, invoices)


async def caught_up(build: Callable[[], FakeBillingStore], batch_size: int) -> dict[str, Any]:
    store, publish = build(), FakePublisher()
    result = await rater(store, publish, batch_size=batch_size).run_once(AFTER_APR)
    return outcome(store, publish, result.invoices)


def late_every_month() -> FakeBillingStore:
    """Two subscriptions of cust-1 (sub-2 from February) and one of cust-2; usage every month,
    some of it ingested one or two cutoffs late; credits applied, expiring, voided."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1")
    store.subscribe("sub-2", "cust-1", start=FEB)
    store.subscribe("sub-3", "cust-2")
    for month in range(4):
        start = MONTHS[month]
        for n, customer in enumerate(("cust-1", "cust-2"), start=1):
            store.use(customer, 1000 * n + month, start + timedelta(days=3))
            store.use(customer, 300 * n, start + timedelta(days=20), ingested=cutoff_of(month))  # one cutoff late
            if month < 2:  # two cutoffs late
                store.use(
                    customer, 70 * n, start + timedelta(days=27), ingested=cutoff_of(month + 1) + timedelta(hours=5)
                )
    store.grant("g-promo", "cust-1", "45.00")
    store.grant("g-trial", "cust-1", "10.00", expires_at=at(2024, 2, 15))
    store.granted.append(Grant("g-void", "cust-2", D("80.00"), "USD", 1, JAN, None, at(2024, 3, 10)))
    store.granted.append(Grant("g-eur", "cust-2", D("8.00"), "EUR", 1, JAN, at(2024, 3, 1)))
    return store


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 2000])
async def test_catching_up_on_four_months_gives_the_invoices_month_by_month_rating_gives(batch_size):
    expected = await month_by_month(late_every_month)
    assert len(expected["invoices"]) == 11  # 4 + 3 + 4 periods
    # The late usage is billed once: each period's tokens, as of April's cutoff, across its invoices.
    assert expected["billed"]["sub-1"][(JAN, "pro:tokens")][:3] == (D(1370), D("13.70"), None)
    assert expected["billed"]["sub-3"][(FEB, "pro:tokens")][:3] == (D(2741), D("27.41"), None)

    assert await caught_up(late_every_month, batch_size) == expected


@st.composite
def scenarios(draw: st.DrawFn) -> Callable[[], FakeBillingStore]:
    """Subscriptions, usage ingested on time or up to three cutoffs late, and grants that may
    expire, be voided, or be in another currency; as a function building a fresh store."""
    subscriptions = [("sub-1", "cust-1", JAN)]
    subscriptions += [
        (f"sub-{n}", draw(st.sampled_from(["cust-1", "cust-2"])), draw(st.sampled_from(MONTHS[:3])))
        for n in range(2, draw(st.integers(2, 4)))
    ]
    readings = [
        (
            draw(st.sampled_from(["cust-1", "cust-2"])),
            draw(st.integers(0, 5000)),
            draw(st.integers(0, 3)),  # month
            draw(st.integers(0, 30 * 24 * 60 - 1)),  # minute of the month
            draw(st.sampled_from([0, 0, 1, 2, 3])),  # cutoffs late
            draw(st.integers(0, 600)),  # minutes after that cutoff
        )
        for _ in range(draw(st.integers(0, 12)))
    ]
    moments = st.one_of(st.none(), st.integers(-10, 130).map(lambda days: JAN + timedelta(days=days)))
    grants = [
        Grant(
            f"g-{n}",
            draw(st.sampled_from(["cust-1", "cust-2"])),
            D(draw(st.integers(0, 6000))) / 100,
            draw(st.sampled_from(["USD", "USD", "EUR"])),
            draw(st.integers(0, 2)),
            JAN + timedelta(days=draw(st.integers(-5, 100))),
            draw(moments),
            draw(moments),
        )
        for n in range(draw(st.integers(0, 4)))
    ]

    def build() -> FakeBillingStore:
        store = FakeBillingStore()
        for subscription, customer, start in subscriptions:
            store.subscribe(subscription, customer, start=start)
        for customer, tokens, month, minute, late, after in readings:
            time = MONTHS[month] + timedelta(minutes=minute)
            late_by = min(month + late, 4) - 1
            ingested = time if late == 0 or late_by < month else cutoff_of(late_by) + timedelta(minutes=after)
            store.use(customer, tokens, time, ingested=max(time, ingested))
        store.granted.extend(grants)
        return store

    return build


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_rating_any_closed_periods_gives_the_same_invoices_whatever_the_batch_size(build):
    expected = asyncio.run(month_by_month(build))
    for batch_size in (1, 2, 2000):
        assert asyncio.run(caught_up(build, batch_size)) == expected, f"batch_size={batch_size}"
    # Late usage is billed exactly once: by April's invoices, every period's tokens are those
    # ingested before April's cutoff, split over the invoices that billed them.
    store = build()
    tokens = Meter(key="llm_tokens", event_type="e", aggregation=Aggregation.SUM, value_property="$.v")
    for sub in store.subscriptions({"pro": PRO}):
        for month in range(MONTHS.index(sub.anchor), 4):
            start, end = MONTHS[month], MONTHS[month + 1]
            usage = store.usage_by_customer(tokens, {}, start, end, cutoff_of(3)).get(sub.customer_id)
            billed = expected["billed"][sub.subscription_id].get((start, "pro:tokens"), (D(0), D(0)))
            assert billed[0] == (usage.quantity if usage else D(0))


# --- a crash inside store_invoices -----------------------------------------------------


def two_months_with_credits() -> FakeBillingStore:
    """January and February rated in one run: late January usage adjusted on February, a
    grant applied on both, one expiring in January, one in another currency expiring too."""
    store = one_customer(tokens=1000)
    store.use("cust-1", 300, at(2024, 1, 31), ingested=FEB + GRACE)
    store.use("cust-1", 800, at(2024, 2, 12))
    store.grant("g-promo", "cust-1", "40.00")
    store.grant("g-trial", "cust-1", "5.00", expires_at=at(2024, 1, 20))
    store.granted.append(Grant("g-eur", "cust-1", D("8.00"), "EUR", 1, JAN - timedelta(days=1), at(2024, 2, 20)))
    return store


@pytest.mark.parametrize("step", ["lines", "ledger", "invoices"])
@pytest.mark.parametrize(
    ("batch_size", "crash_call"),
    [(2000, 1), (1, 1), (1, 2)],
    ids=["one batch", "january's batch", "february's batch"],
)
async def test_a_crash_before_any_write_of_store_invoices_rates_the_same_invoices_next_run(
    step, batch_size, crash_call
):
    control, control_publish = two_months_with_credits(), FakePublisher()
    expected = (await rater(control, control_publish, batch_size=batch_size).run_once(AFTER_FEB)).invoices
    assert [d["credits_applied"] for d in expected] == ["30.00", "10.00"]  # 40.00 over both months
    assert [d["credits_expired"] for d in expected] == [
        [{"grant_id": "g-trial", "amount": "5.00", "currency": "USD"}],
        [{"grant_id": "g-eur", "amount": "8.00", "currency": "EUR"}],
    ]
    assert amounts(expected[1])[1:] == [("tokens", "800", "8.00"), ("tokens", "300", "3.00")]

    store, publish = two_months_with_credits(), FakePublisher()
    store.fail_store_before, store.fail_store_from_call = step, crash_call
    with pytest.raises(StoreFailed):
        await rater(store, publish, batch_size=batch_size).run_once(AFTER_FEB)
    # What the crash left counts for nothing: only stored invoices draw, bill and are announced.
    if crash_call == 1:
        assert (store.invoice_ids(), store.grants()[1], store.billed("sub-1")) == (set(), {}, {})
        assert publish.delivered == []
    else:
        assert store.invoice_ids() == {JAN_INVOICE}
        assert store.grants()[1] == {"g-promo": D("30.00"), "g-trial": D("5.00")}
        assert store.billed("sub-1") == {
            (JAN, "pro:base"): Billing(D(1), D(20), windows=(ServiceWindow(JAN, FEB, D(1), D(20)),)),
            (JAN, "pro:tokens"): Billing(D(1000), D(10), windows=(ServiceWindow(JAN, FEB, D(1000), D(10)),)),
        }
        assert publish.invoices() == expected[:1]
    store.fail_store_before = None
    result = await rater(store, publish, batch_size=batch_size).run_once(AFTER_FEB)

    assert result.invoices == expected[crash_call - 1 :]
    assert {i: s.document for i, s in store.invoices.items()} == {i: s.document for i, s in control.invoices.items()}
    assert publish.delivered == control_publish.delivered  # each invoice and movement announced once
    assert store.lines == control.lines
    assert {m: r._replace(recorded_at=JAN) for m, r in store.ledger.items()} == {
        m: r._replace(recorded_at=JAN) for m, r in control.ledger.items()
    }
    assert store.grants() == control.grants() and store.billed("sub-1") == control.billed("sub-1")
    assert {e["data"]["currency"] for e in publish.events("credits") if e["data"]["grant_id"] == "g-eur"} == {"EUR"}


async def test_a_grant_arriving_between_a_crash_and_the_rerun_leaves_no_orphan_draw():
    """The re-rated invoice draws from another grant than the interrupted attempt did: that
    attempt's movement is zeroed, so the grant it named keeps its whole balance."""
    store, publish = one_customer(), FakePublisher()
    store.grant("g-promo", "cust-1", "12.50")
    store.fail_store_before = "invoices"
    with pytest.raises(StoreFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    orphan = movement_id("applied", "g-promo", JAN_INVOICE)
    assert store.ledger[orphan].amount == D("12.50")

    store.fail_store_before = None
    store.granted.append(Grant("g-first", "cust-1", D("30.00"), "USD", 0, JAN - timedelta(days=1)))
    (january,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    assert january["credit_allocations"] == [{"grant_id": "g-first", "amount": "30.00", "funding": "promotional"}]
    assert store.ledger[orphan].amount == 0  # zeroed, not left drawing 12.50
    assert store.grants()[1] == {"g-first": D("30.00"), "g-promo": D(0)}
    assert [e["data"]["grant_id"] for e in publish.events("credits")] == ["g-first"]
    (february,) = (await rater(store, publish).run_once(AFTER_FEB)).invoices
    assert february["credit_allocations"] == [{"grant_id": "g-promo", "amount": "12.50", "funding": "promotional"}]


async def test_an_expiry_left_by_a_crash_is_announced_once_or_never_if_the_grant_is_voided_meanwhile():
    store, publish = one_customer(), FakePublisher()
    store.grant("g-trial", "cust-1", "5.00", expires_at=at(2024, 1, 20))
    store.fail_store_before = "invoices"
    with pytest.raises(StoreFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    expiry = movement_id("expired", "g-trial", JAN_INVOICE)
    assert store.ledger[expiry].amount == D("5.00") and store.grants()[1] == {}

    # Voided (before it expired) by the time the period is rated again: the void wins.
    store.fail_store_before = None
    store.granted = [replace(store.granted[0], voided_at=at(2024, 1, 10))]
    (january,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    assert january["credits_expired"] == []
    assert store.ledger[expiry].amount == 0
    assert publish.events("credits") == []
    await rater(store, publish).run_once(AFTER_MAR)
    assert publish.events("credits") == []  # never announced later either


# --- credit event currency, voids ------------------------------------------------------


async def test_a_republished_credit_event_carries_the_grants_currency():
    store, publish = one_customer(), FakePublisher()
    store.grant("g-promo", "cust-1", "12.50")
    store.granted.append(Grant("g-eur", "cust-1", D("8.00"), "EUR", 1, JAN - timedelta(days=1), at(2024, 1, 20)))
    publish.fail(after=1)  # the invoice goes out, the credit events do not
    with pytest.raises(PublishFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    publish.heal()
    result = await rater(store, publish).run_once(AFTER_JAN)

    assert result.republished == 1
    assert [(e["type"], e["data"]["grant_id"], e["data"]["currency"]) for e in publish.events("credits")] == [
        ("bastionary.credit.applied.v1", "g-promo", "USD"),
        ("bastionary.credit.expired.v1", "g-eur", "EUR"),
    ]
    assert {row.grant_id: row.currency for row in store.ledger.values()} == {"g-promo": "USD", "g-eur": "EUR"}


@pytest.mark.parametrize(
    ("voided_at", "expired"),
    [
        (at(2024, 1, 10), False),  # voided, then it would have expired
        (at(2024, 1, 25), False),  # expired, then voided, both by the period end: the void wins
        (FEB, False),  # voided at the period end
        (at(2024, 2, 15), True),  # expired by the period end, voided only after it
    ],
    ids=["voided before the expiry", "voided after the expiry", "voided at the period end", "voided later"],
)
async def test_a_voided_grant_never_expires(voided_at, expired):
    store, publish = one_customer(), FakePublisher()
    store.granted.append(
        Grant("g-trial", "cust-1", D("5.00"), "USD", 1, JAN - timedelta(days=1), at(2024, 1, 20), voided_at)
    )
    results = [(await rater(store, publish).run_once(now)).invoices for now in (AFTER_JAN, AFTER_FEB, AFTER_MAR)]

    assert [document["credits_expired"] for (document,) in results] == [
        [{"grant_id": "g-trial", "amount": "5.00", "currency": "USD"}] if expired else [],
        [],
        [],
    ]
    assert [row.kind for row in store.ledger.values()] == (["expired"] if expired else [])
    assert len(publish.events("credits")) == (1 if expired else 0)
    assert all(document["credit_allocations"] == [] for (document,) in results)
    assert balances(store.granted, store.grants()[1], MAR)[0].status == "voided"


# --- the upcoming invoice --------------------------------------------------------------


@pytest.mark.parametrize("late_jan_tokens", [0, 700])
async def test_a_preview_is_the_invoice_later_issued_when_no_usage_follows(late_jan_tokens):
    """Mid-February: January is rated; February's preview (with credits, and an adjustment
    for January usage that landed after January's cutoff) equals February's invoice."""
    store = one_customer(tokens=1500)
    store.grant("g1", "cust-1", "40.00")
    publish = FakePublisher()
    await rater(store, publish).run_once(AFTER_JAN)
    store.use("cust-1", 2500, at(2024, 2, 10))
    if late_jan_tokens:
        store.use("cust-1", late_jan_tokens, at(2024, 1, 20), ingested=at(2024, 2, 5))
    mid_feb = at(2024, 2, 15)
    (sub,) = store.subscriptions({"pro": PRO})
    found = upcoming_period(sub, mid_feb, GRACE, store.invoice_ids())
    assert found is not None
    earlier, period, cutoff = found
    assert (period.start, period.end, [p.start for p in earlier]) == (FEB, MAR, [JAN])
    grants, drawn = store.grants()
    (preview,) = rater(store, publish).preview([(sub, earlier, period, cutoff)], grants["cust-1"], drawn)
    assert preview["status"] == "preview"
    assert store.grants()[1] == drawn  # nothing was drawn by the preview
    await rater(store, publish).run_once(AFTER_FEB)
    issued = next(i for i in publish.invoices() if i["period_start"] == FEB.isoformat())
    assert issued == preview | {"status": "finalized"}
    assert any(line.get("adjusts_period_start") for line in issued["lines"]) == bool(late_jan_tokens)


def test_the_upcoming_period_skips_rated_and_due_periods_and_ends_with_the_subscription():
    store = one_customer()
    (sub,) = store.subscriptions({"pro": PRO})
    assert upcoming_period(sub, at(2024, 1, 10), GRACE, set())[1].start == JAN
    # Within January's grace, January is still the upcoming invoice; once rated, February is.
    assert upcoming_period(sub, FEB + timedelta(minutes=30), GRACE, set())[1].start == JAN
    assert upcoming_period(sub, FEB + timedelta(minutes=30), GRACE, {JAN_INVOICE})[1].start == FEB
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", JAN, None, at(2024, 2, 10)))
    (ended,) = store.subscriptions({"pro": PRO})
    last = upcoming_period(ended, at(2024, 2, 10, 0, 30), GRACE, {JAN_INVOICE})
    assert last is not None and (last[1].start, last[1].end) == (FEB, at(2024, 2, 10))
    # Past the last period's cutoff that period is due (the rater's), and nothing follows it.
    assert upcoming_period(ended, at(2024, 2, 11), GRACE, {JAN_INVOICE}) is None


# --- a negative period is carried forward ----------------------------------------------

METERED_ONLY = Plan.model_validate(
    {
        "key": "metered",
        "currency": "USD",
        "billing_interval": "P1M",
        "prices": [{"key": "tokens", "meter": "llm_tokens", "model": "per_unit", "unit_amount": "0.01"}],
    }
)


async def test_a_negative_period_is_carried_forward_and_drawn_by_the_next_invoices():
    """January bills 1,000 tokens (10.00). A correction of -1,000 January tokens lands in
    February: February's adjustment is -10.00, so its invoice is 0 and 10.00 is carried.
    March (5.00) and April (10.00) draw it: 5.00, then the other 5.00. No money is made or lost."""
    store = FakeBillingStore()
    store.subscribe("sub-m", "cust-m", plan="metered")
    store.use("cust-m", 1000, at(2024, 1, 10))
    store.use("cust-m", -1000, at(2024, 1, 20), ingested=at(2024, 2, 5))
    store.use("cust-m", 500, at(2024, 3, 10))
    store.use("cust-m", 1000, at(2024, 4, 10))
    publish = FakePublisher()
    rate = Rater(store, [METERED_ONLY], [TOKENS], GRACE, publish)
    for moment in (AFTER_JAN, AFTER_FEB, AFTER_MAR, AFTER_APR):
        await rate.run_once(moment)
    invoices = sorted(publish.invoices(), key=lambda d: d["period_start"])
    assert [(d["subtotal"], d["credits_applied"], d["total"], d["carried_forward"]) for d in invoices] == [
        ("10.00", "0.00", "10.00", "0.00"),
        ("-10.00", "0.00", "0.00", "10.00"),
        ("5.00", "5.00", "0.00", "0.00"),
        ("10.00", "5.00", "5.00", "0.00"),
    ]
    carried = [e for e in publish.events("credits") if e["type"] == "bastionary.credit.carried.v1"]
    assert [(e["data"]["amount"], e["data"]["currency"]) for e in carried] == [("10.00", "USD")]
    # Charges equal credits applied plus totals minus what was carried, over the history.
    charged = sum(D(d["subtotal"]) for d in invoices)
    assert charged == sum(D(d["credits_applied"]) + D(d["total"]) - D(d["carried_forward"]) for d in invoices)
    grants, drawn = store.grants()
    (balance,) = grants["cust-m"]
    assert (balance.amount, drawn[balance.grant_id]) == (D("10.00"), D("10.00"))


async def test_a_negative_period_reverses_its_tax_and_carries_it_forward():
    """As above with 19% VAT: February takes back January's 10.00 and its 1.90 of tax, so the
    customer's balance is the 11.90 January cost. March and April draw it tax included, and the
    tax over the four invoices is 19% of the 15.00 of usage that stands: 2.85."""
    store = FakeBillingStore()
    store.subscribe("sub-m", "cust-m", plan="metered")
    store.terms["cust-m"] = CustomerTerms({}, TaxProfile("DE"))
    store.use("cust-m", 1000, at(2024, 1, 10))
    store.use("cust-m", -1000, at(2024, 1, 20), ingested=at(2024, 2, 5))
    store.use("cust-m", 500, at(2024, 3, 10))
    store.use("cust-m", 1000, at(2024, 4, 10))
    publish = FakePublisher()
    invoicing = Invoicing(taxes=[TaxRate(key="vat", name="VAT 19%", rate=D("0.19"), countries=["DE"])])
    rate = Rater(store, [METERED_ONLY], [TOKENS], GRACE, publish, invoicing=invoicing)
    for moment in (AFTER_JAN, AFTER_FEB, AFTER_MAR, AFTER_APR):
        await rate.run_once(moment)
    invoices = sorted(publish.invoices(), key=lambda d: d["period_start"])
    assert [(d["subtotal"], d["tax"], d["credits_applied"], d["total"], d["carried_forward"]) for d in invoices] == [
        ("10.00", "1.90", "0.00", "11.90", "0.00"),
        ("-10.00", "-1.90", "0.00", "0.00", "11.90"),
        ("5.00", "0.95", "5.95", "0.00", "0.00"),
        ("10.00", "1.90", "5.95", "5.95", "0.00"),
    ]
    assert sum(D(d["tax"]) for d in invoices) == D("2.85")
    charged = sum(D(d["subtotal"]) + D(d["tax"]) for d in invoices)
    assert charged == sum(D(d["credits_applied"]) + D(d["total"]) - D(d["carried_forward"]) for d in invoices)


# --- an ended subscription still bills its late usage, once -----------------------------

FINAL_JAN = invoice_id("sub-1", JAN, FINAL_ADJUSTMENT)


def ended_in_january(late_tokens: int = 500) -> FakeBillingStore:
    """sub-1 canceled at the end of January: 1,000 tokens in time, ``late_tokens`` ingested
    after January's cutoff (01:00) but before the final cutoff (02:00), and 300 after it."""
    store = one_customer()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", JAN, None, FEB))
    if late_tokens:
        store.use("cust-1", late_tokens, at(2024, 1, 20), ingested=at(2024, 2, 1, 1, 30))
    store.use("cust-1", 300, at(2024, 1, 25), ingested=at(2024, 2, 1, 2, 30))
    return store


async def test_late_usage_of_an_ended_subscription_is_billed_once_on_a_final_adjustment():
    store, publish = ended_in_january(), FakePublisher()
    (january,) = (await rater(store, publish).run_once(at(2024, 2, 1, 1, 30))).invoices
    assert (january["kind"], january["subtotal"]) == ("period", "30.00")
    (final,) = (await rater(store, publish).run_once(at(2024, 2, 1, 3))).invoices
    assert (final["invoice_id"], final["kind"], final["status"]) == (FINAL_JAN, FINAL_ADJUSTMENT, "finalized")
    assert (final["period_start"], final["period_end"]) == (JAN.isoformat(), FEB.isoformat())
    assert [(line["price_key"], line["quantity"], line["amount"]) for line in final["lines"]] == [
        ("tokens", "500", "5.00")
    ]
    assert final["total"] == "5.00" and final["issued_at"] == at(2024, 2, 1, 2).isoformat()
    # Once: the 300 tokens ingested after the final cutoff are never billed, and nothing follows.
    assert await rater(store, publish).run_once(at(2024, 6, 1)) == RatingResult([])
    assert [d["invoice_id"] for d in publish.invoices()] == [JAN_INVOICE, FINAL_JAN]

    # Caught up in one run, the same two invoices.
    again, publish_again = ended_in_january(), FakePublisher()
    await rater(again, publish_again).run_once(at(2024, 6, 1))
    assert publish_again.invoices() == publish.invoices()


async def test_an_ended_subscription_without_late_usage_has_an_empty_final_adjustment_never_published():
    store, publish = ended_in_january(late_tokens=0), FakePublisher()
    result = await rater(store, publish).run_once(at(2024, 2, 1, 3))
    assert [(d["invoice_id"], d["status"]) for d in result.invoices] == [
        (JAN_INVOICE, "finalized"),
        (FINAL_JAN, EMPTY),
    ]
    assert [d["invoice_id"] for d in publish.invoices()] == [JAN_INVOICE]
    assert store.invoices[FINAL_JAN].published  # stored and done with: never rated again
    assert await rater(store, publish).run_once(at(2024, 6, 1)) == RatingResult([])


@pytest.mark.parametrize("canceled_at", [JAN, JAN - timedelta(days=1)], ids=["at-the-start", "before-it"])
async def test_a_subscription_canceled_at_its_start_is_credited_its_fee_in_advance(canceled_at):
    """Its advance invoice billed 30.00 at the start; a cancellation effective at the start
    (one in the same minute, say) left no period, so no final adjustment, and the fee stayed
    billed for a service that never ran."""
    ahead = Plan.model_validate(
        {
            "key": "p",
            "currency": "USD",
            "prices": [{"key": "base", "model": "flat", "amount": "30", "billing_timing": "advance"}],
        }
    )
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1", plan="p")
    rater = Rater(store, [ahead], [TOKENS], GRACE, publish)
    (advance,) = (await rater.run_once(at(2024, 1, 1, 0, 5))).invoices
    assert (advance["kind"], advance["subtotal"]) == ("advance", "30.00")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "p", None, None, canceled_at))
    later = [invoice for now in (at(2024, 1, 1, 3), AFTER_FEB) for invoice in (await rater.run_once(now)).invoices]
    assert [(i["kind"], i["period_start"], i["period_end"], i["subtotal"]) for i in later] == [
        ("final_adjustment", JAN.isoformat(), JAN.isoformat(), "-30.00")
    ]
    assert sum(billing.amount for billing in store.billed("sub-1").values()) == 0


def test_the_final_cutoff_is_the_last_cutoff_plus_the_grace_and_only_for_an_ended_subscription():
    store = one_customer()
    (running,) = store.subscriptions({"pro": PRO})
    assert final_adjustment(running, at(2030, 1, 1), GRACE) is None
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", JAN, None, at(2024, 2, 10)))
    (ended,) = store.subscriptions({"pro": PRO})
    assert final_adjustment(ended, at(2024, 2, 10, 1, 59), GRACE) is None
    periods, cutoff = final_adjustment(ended, at(2024, 2, 10, 2), GRACE)
    assert [(p.start, p.end) for p in periods] == [(JAN, FEB), (FEB, at(2024, 2, 10))]
    assert cutoff == at(2024, 2, 10, 2)


# --- any sequence of grants, purchases, usage and corrections: no money made or lost -------

FOUR_MONTHS = (JAN, FEB, MAR, APR)


@settings(max_examples=60, deadline=None)
@given(
    usage=st.lists(st.tuples(st.integers(0, 3), st.integers(-1500, 4000), st.booleans()), max_size=8),
    credits=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["promotional", "paid"]),
            st.integers(1, 4000),
            st.none() | st.integers(0, 4),
        ),
        max_size=5,
    ),
    threshold=st.none() | st.integers(0, 30),
)
def test_any_sequence_keeps_every_balance_the_ledger_sum_and_every_invoice_adding_up(usage, credits, threshold):
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-m", "cust-m", plan="metered")
    if threshold is not None:
        store.topups["cust-m"] = {"USD": (D(threshold), D(50))}
    for month, tokens, late in usage:  # a late reading lands after its month's cutoff
        when = FOUR_MONTHS[month] + timedelta(days=3)
        store.use("cust-m", tokens, when, ingested=FOUR_MONTHS[month] + timedelta(days=40) if late else when)
    rate = Rater(store, [METERED_ONLY], [TOKENS], GRACE, publish)
    for month, moment in enumerate(AFTER_EACH_MONTH):
        for n, (at_month, funding, cents, expiry) in enumerate(credits):
            if at_month == month:
                expires = None if expiry is None else FOUR_MONTHS[0] + timedelta(days=31 * expiry + 15)
                store.grant(f"g{n}", "cust-m", str(D(cents) / 100), expires, funding=funding)
        asyncio.run(rate.run_once(moment))

    invoices = publish.invoices()
    assert all(D(d["total"]) >= 0 for d in invoices)
    subtotals, applied, totals, carried = (sum(D(d[k]) for d in invoices) for k in FIELDS)
    assert subtotals == applied + totals - carried  # no money made or lost
    grants, drawn = store.grants()
    ledger = [row for row in store.ledger.values() if row.invoice_id in store.invoices]
    assert applied == sum(row.amount for row in ledger if row.kind == "applied")
    for grant in grants.get("cust-m", []):  # a balance is the grant less its ledger draws, never below 0
        draws = sum(r.amount for r in ledger if r.grant_id == grant.grant_id and r.kind in ("applied", "expired"))
        assert drawn.get(grant.grant_id, D(0)) == draws <= grant.amount
    for request in (r for d in invoices for r in d["topup_requested"]):
        assert D(request["balance"]) < D(request["threshold"])


FIELDS = ("subtotal", "credits_applied", "total", "carried_forward")


# --- who the invoice is from and to, and its tax -------------------------------------------


async def test_an_invoice_carries_the_issuer_the_customer_s_details_and_their_tax_as_rated():
    store, publish = one_customer(), FakePublisher()  # 30.00
    bill_to = {"name": "Acme GmbH", "email": "ap@acme.example", "address": {"country": "DE"}, "tax_id": "DE1"}
    store.terms["cust-1"] = CustomerTerms(bill_to, TaxProfile("DE"))
    invoicing = Invoicing(
        issuer=Issuer(name="Seller Ltd", tax_id="GB1"),
        taxes=[TaxRate(key="vat", name="VAT 19%", rate=D("0.19"), countries=["DE"])],
    )
    (january,) = (await rater(store, publish, invoicing=invoicing).run_once(AFTER_JAN)).invoices
    assert (january["subtotal"], january["tax"], january["total"]) == ("30.00", "5.70", "35.70")
    assert january["bill_to"] == bill_to and january["issuer"]["name"] == "Seller Ltd"
    store.terms["cust-1"] = CustomerTerms(bill_to, TaxProfile("DE", exempt=True))  # exempt from February
    (february,) = (await rater(store, publish, invoicing=invoicing).run_once(AFTER_FEB)).invoices
    assert (february["tax_lines"], february["tax"], february["total"]) == ([], "0.00", february["subtotal"])


async def test_a_mid_period_plan_change_names_both_plans_and_the_plan_at_the_end_picks_the_policy():
    store, publish = one_customer(), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "metered", JAN, None, at(2024, 1, 16)))
    rate = Rater(store, [PRO, METERED_ONLY], [TOKENS], GRACE, publish)
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert (january["plan"], january["plans"]) == ("metered", ["pro", "metered"])
    (february,) = (await rate.run_once(AFTER_FEB)).invoices
    assert (february["plan"], february["plans"]) == ("metered", ["metered"])


async def test_expired_amounts_are_at_the_grant_currency_s_precision():
    """As intake accepts them (``5``) or the ledger reads them back (Decimal(38, 9)), expired
    amounts were shown as stored (``5``, ``7.000000000``) until 2026-12-07."""
    store, publish = one_customer(), FakePublisher()
    expiry = at(2024, 1, 20)
    for grant_id, amount, currency in [
        ("g-int", "5", "USD"),
        ("g-ch", "7.000000000", "USD"),
        ("g-jpy", "300.0", "JPY"),
    ]:
        store.granted.append(Grant(grant_id, "cust-1", D(amount), currency, 1, JAN - timedelta(days=1), expiry))
    (document,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices

    shown = [("g-int", "5.00"), ("g-ch", "7.00"), ("g-jpy", "300")]
    assert [(m["grant_id"], m["amount"]) for m in document["credits_expired"]] == shown
    events = [e["data"] for e in publish.events("credits") if e["type"] == "bastionary.credit.expired.v1"]
    assert [(e["grant_id"], e["amount"]) for e in events] == shown
    assert store.ledger[movement_id("expired", "g-ch", JAN_INVOICE)].amount == D(7)  # the ledger stays exact


async def test_a_remainder_below_one_minor_unit_lapses_exactly_whatever_its_stored_scale():
    store, publish = one_customer(), FakePublisher()  # 30.00
    store.grant("g-odd", "cust-1", "10.005000000")  # as the ledger reads older data back
    (january,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices
    assert january["credits_expired"] == [
        {"grant_id": "g-odd", "amount": "0.005", "currency": "USD"}
    ]  # not rounded to 0.01


async def test_a_remainder_below_one_minor_unit_lapses_explicitly():
    store, publish = one_customer(), FakePublisher()  # 30.00
    store.grant("g-odd", "cust-1", "10.005")  # older data: more decimals than USD has
    (january,) = (await rater(store, publish).run_once(AFTER_JAN)).invoices
    assert january["credit_allocations"] == [{"grant_id": "g-odd", "amount": "10.00", "funding": "promotional"}]
    assert january["credits_expired"] == [{"grant_id": "g-odd", "amount": "0.005", "currency": "USD"}]
    _, drawn = store.grants()
    assert drawn["g-odd"] == D("10.005")  # the ledger sums to the grant: nothing stranded


async def test_a_first_period_that_starts_late_commits_to_its_share_of_the_minimum():
    """Anchored on 1 January, started on the 17th: 15 of January's 31 days. The flat fee is
    prorated 15/31, and so is the minimum: 100 x 15/31 = 48.39. The whole 100.00 was billed
    before."""
    mini = Plan.model_validate(
        {
            "key": "mini",
            "currency": "USD",
            "billing_interval": "P1M",
            "minimum_commitment": "100",
            "prices": [{"key": "base", "model": "flat", "amount": "31"}],
        }
    )
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", "mini", at(2024, 1, 17), JAN, at(2024, 1, 17)))
    (january,) = (await Rater(store, [mini], [TOKENS], GRACE, publish).run_once(AFTER_JAN)).invoices
    amounts = {line["price_key"]: line["amount"] for line in january["lines"]}
    assert amounts == {"base": "15.00", "minimum_commitment": "33.39"}
    assert january["subtotal"] == "48.39"


def _late_start_plan(key: str, minimum: str | None = None) -> Plan:
    fields: dict[str, Any] = {
        "key": key,
        "currency": "USD",
        "billing_interval": "P1M",
        "prices": [{"key": "base", "model": "flat", "amount": "31"}],
    }
    if minimum is not None:
        fields["minimum_commitment"] = minimum
    return Plan.model_validate(fields)


@pytest.mark.parametrize(
    ("changed_at", "rated_at"),
    [
        pytest.param(at(2024, 1, 25), AFTER_JAN, id="changed-in-january"),
        pytest.param(FEB + timedelta(days=9), AFTER_FEB, id="changed-in-february"),
    ],
)
async def test_a_first_period_that_starts_late_takes_the_first_plans_minimum(changed_at, rated_at):
    """Started on 17 January on a plan with a minimum, later changed to one without. The
    period's start (1 January) is before the subscription: the plan there was taken as the
    last one, and January lost its true-up."""
    with_minimum, without = _late_start_plan("a", "100"), _late_start_plan("b")
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(SubscriptionEvent("s", "c", "created", "a", at(2024, 1, 17), JAN, at(2024, 1, 17)))
    store.events.append(SubscriptionEvent("s", "c", "changed", "b", None, None, changed_at))
    invoices = (await Rater(store, [with_minimum, without], [TOKENS], GRACE, publish).run_once(rated_at)).invoices
    january = next(invoice for invoice in invoices if invoice["period_start"].startswith("2024-01"))
    assert any(line["price_key"] == "minimum_commitment" for line in january["lines"]), january["lines"]


@pytest.mark.parametrize("rounds", [[at(2024, 3, 10, 3)], [at(2024, 2, 1, 2), at(2024, 3, 1, 2), at(2024, 3, 10, 3)]])
async def test_a_period_wholly_before_the_start_bills_nothing_ahead(rounds):
    """Anchored on 1 January, started on 10 March, a 31.00 fee in advance: February's
    invoice (wholly before the start) billed March's fee, 22.00, and the advance invoice at the
    start 0.00. The first fee is the advance invoice's."""
    ahead = Plan.model_validate(
        {
            "key": "p",
            "currency": "USD",
            "prices": [{"key": "base", "model": "flat", "amount": "31", "billing_timing": "advance"}],
        }
    )
    store, publish = FakeBillingStore(), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", "p", at(2024, 3, 10), JAN, at(2024, 3, 10)))
    rater = Rater(store, [ahead], [TOKENS], GRACE, publish)
    invoices = [invoice for now in rounds for invoice in (await rater.run_once(now)).invoices]
    assert [(i["kind"], i["period_start"][:10], i["subtotal"]) for i in invoices] == [
        ("period", "2024-01-01", "0.00"),
        ("period", "2024-02-01", "0.00"),
        ("advance", "2024-03-10", "22.00"),
    ]


# --- an invoice that cannot be priced -------------------------------------------------

THOUSAND_A_TOKEN = Plan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "billing_interval": "P1M",
        "prices": [{"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "1000"}],
        "usage_thresholds": ["1000000"],
    }
)
# 1.2E+25 tokens (a sum the usage column holds) at 1000.00 each: 29 digits before the cents,
# past what Decimal's default 28-digit context can round to a cent.
UNPRICEABLE = D("12345678901234567890123456.123456789")


async def test_an_invoice_that_cannot_be_priced_stops_only_its_customer():
    store, publish = one_customer(), FakePublisher()
    store.subscribe("sub-2", "cust-2")
    store.use("cust-2", UNPRICEABLE, at(2024, 1, 3))  # type: ignore[arg-type]
    store.use("cust-2", 5, at(2024, 2, 3))
    plans = [THOUSAND_A_TOKEN]
    result = await Rater(store, plans, [TOKENS], GRACE, publish, lambda c: True).run_once(AFTER_FEB)

    # cust-1's January and February are issued; cust-2's January cannot be priced, and its
    # February (which would draw its credits after January) waits with it.
    assert sorted((d["customer_id"], d["period_start"]) for d in result.invoices) == [
        ("cust-1", JAN.isoformat()),
        ("cust-1", FEB.isoformat()),
    ]
    ((customer, subscription, kind, period_start, error),) = [
        (f.customer_id, f.subscription_id, f.kind, f.period_start, f.error) for f in result.failed
    ]
    assert (customer, subscription, kind, period_start) == ("cust-2", "sub-2", "period", JAN)
    assert "InvalidOperation" in error
    assert set(store.invoices) == {invoice_id("sub-1", JAN), invoice_id("sub-1", FEB)}
    assert [d["customer_id"] for d in publish.invoices()] == ["cust-1", "cust-1"]

    # Retried every run, failing the same way, and nothing of it is ever stored half.
    again = await Rater(store, plans, [TOKENS], GRACE, publish, lambda c: True).run_once(AFTER_FEB)
    assert (again.invoices, [f.customer_id for f in again.failed]) == ([], ["cust-2"])
    assert len(store.invoices) == 2


async def test_a_usage_threshold_check_that_cannot_be_priced_leaves_the_other_customers_checked():
    store, publish = one_customer(tokens=2000), FakePublisher()  # 2,000,000.00: past the threshold
    store.subscribe("sub-2", "cust-2")
    store.use("cust-2", UNPRICEABLE, at(2024, 1, 3))  # type: ignore[arg-type]
    result = await Rater(store, [THOUSAND_A_TOKEN], [TOKENS], GRACE, publish, lambda c: True).run_once(at(2024, 1, 20))

    assert [(d["customer_id"], d["kind"]) for d in result.invoices] == [("cust-1", "progressive")]
    assert [(f.customer_id, f.kind) for f in result.failed] == [("cust-2", "progressive")]
