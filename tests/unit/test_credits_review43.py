"""Credits and credit limits, from the forty-third session's review: each test failed before
its fix."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from bastionary.rating.amount_due import amount_due
from bastionary.rating.credit_notes import CreditNoteRequest, Standing, decide
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.spend import CreditLimit
from bastionary.rating.spend_monitor import SpendMonitor
from bastionary.storage.spend import ClickHouseSpendStore

from .test_credit_notes import ASKED, NOW
from .test_rater import AFTER_JAN, FakePublisher, one_customer, rater
from .test_spend import FakeSpend, kinds

D = Decimal


class _Client:
    """Answers the spend store's queries with fixed rows, by the table each one reads."""

    def __init__(self, **tables: list[tuple[Any, ...]]):
        self.tables = tables

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> SimpleNamespace:
        table = next(name for name in self.tables if f"FROM {name}" in sql)
        return SimpleNamespace(result_rows=self.tables[table])


def test_the_exposure_counts_what_dunning_still_chases_after_a_note_gave_back_and_a_chargeback():
    """Paid 100.00, a note gave 30.00 back to the balance, then 50.00 was charged back: 50.00 is
    owed again (README, Credit notes). The exposure counted 20.00 (payments netted against the
    note as if what it gave back still paid the invoice)."""
    client = _Client(
        invoices=[("inv-1", "c1", "USD", D("100.00"))],
        payments=[  # as dunning records them, summed per kind
            ("inv-1", "succeeded", D("100.00")),
            ("inv-1", "credited", D("30.00")),
            ("inv-1", "given_back", D("30.00")),
            ("inv-1", "refunded", D("50.00")),
        ],
    )
    chased = amount_due(D(100), D(50), D(30), D(30), D(50), D(0))
    assert chased == D(50)
    assert ClickHouseSpendStore(client).unpaid({"c1"}) == {"c1": {"USD": chased}}


def test_the_exposure_of_a_note_s_refund_the_payment_system_reported_is_not_counted_twice():
    """Paid 100.00, a note of 40.00 refunded through the payment system, which reported it:
    60.00 paid toward 60.00 asked, nothing due (the report is the note's refund, not a second one)."""
    client = _Client(
        invoices=[("inv-1", "c1", "USD", D("100.00"))],
        payments=[
            ("inv-1", "succeeded", D("100.00")),
            ("inv-1", "credited", D("40.00")),
            ("inv-1", "given_back", D("40.00")),
            ("inv-1", "note_refunded", D("40.00")),
            ("inv-1", "refunded", D("40.00")),
        ],
    )
    assert ClickHouseSpendStore(client).unpaid({"c1"}) == {"c1": {"USD": D(0)}}


def test_a_limit_taken_away_while_reached_is_restored():
    """The limit reached, then taken off the customer record: metered entitlements denied for
    good, since only a restored event lifts the denial and nothing decided one any more."""
    store, publish = one_customer(tokens=0), FakePublisher()  # pro: 20.00 running
    store.terms["cust-1"] = CustomerTerms(credit_limit=CreditLimit(currency="USD", amount=D("15")))
    spend = FakeSpend({})
    monitor = SpendMonitor(store, spend, rater(store, publish), publish)
    assert kinds(asyncio.run(monitor.run_once(AFTER_JAN))) == [("reached", "1")]
    store.terms["cust-1"] = CustomerTerms()
    (restored,) = asyncio.run(monitor.run_once(AFTER_JAN))
    assert (restored.kind, restored.data["sequence"], restored.data["running_charge"]) == ("restored", 2, "20.00")
    assert not spend.history()[("cust-1", "USD")].reached
    assert asyncio.run(monitor.run_once(AFTER_JAN)) == []  # once
    assert [e["type"] for e in publish.events("credits")][-1] == "bastionary.credit_limit.restored.v1"


def test_a_limit_moved_to_another_currency_restores_the_one_reached():
    store, publish = one_customer(tokens=0), FakePublisher()
    store.terms["cust-1"] = CustomerTerms(credit_limit=CreditLimit(currency="USD", amount=D("15")))
    spend = FakeSpend({})
    monitor = SpendMonitor(store, spend, rater(store, publish), publish)
    asyncio.run(monitor.run_once(AFTER_JAN))
    store.terms["cust-1"] = CustomerTerms(credit_limit=CreditLimit(currency="EUR", amount=D("15")))
    assert [(e.currency, e.kind) for e in asyncio.run(monitor.run_once(AFTER_JAN))] == [("USD", "restored")]


def test_a_lifted_limit_s_restored_event_names_the_limit_it_was_reached_at():
    client = _Client(
        spend_events=[
            ("c1", "USD", "threshold_crossed", "0.5", "2026-03-01T00:00:00+00:00", D("40.00")),
            ("c1", "USD", "reached", "1", "2026-03-01T00:00:00+00:00", D("40.00")),
        ]
    )
    history = ClickHouseSpendStore(client).history()[("c1", "USD")]
    assert (history.reached, history.limit) == (True, D("40.00"))


def test_a_voided_invoice_still_gives_back_its_credit_after_a_note_refunded_its_money():
    """Total 100.00 after 50.00 of prepaid credit, paid; a note refunds the 100.00 through the
    payment system, which then voids the invoice. The 50.00 of credit is still the customer's:
    it was taken for given back (the refund counted as credit) and no note could return it."""

    def note(note_id: str, at: Standing) -> dict[str, Any]:
        request = CreditNoteRequest(credit_note_id=note_id, invoice_id="inv-1", customer_id="c1")
        return decide("evt", ASKED, request, at, NOW).document

    paid = Standing("inv-1", "c1", "USD", D("100.00"), D("100.00"), D(0), D(0), credits_applied=D("50.00"))
    refund = CreditNoteRequest(
        credit_note_id="cn-1", invoice_id="inv-1", customer_id="c1", amount=D("100.00"), refund_to="payment"
    )
    first = decide("evt", ASKED, refund, paid, NOW).document
    assert (first["refunded"], first["credited_to_balance"]) == ("100.00", "0.00")
    voided = Standing(
        "inv-1", "c1", "USD", D("100.00"), D(0), D("100.00"), D(0),
        refunds_reported=D("100.00"), notes_refunded=D("100.00"), credits_applied=D("50.00"), voided=True,
    )  # fmt: skip
    second = note("cn-2", voided)
    assert (second["status"], second["credited_to_balance"], second["refunded"]) == ("issued", "50.00", "0.00")
    after = Standing(**{**voided.__dict__, "credited": D("150.00")})
    assert note("cn-3", after)["status"] == "rejected"  # given back once
