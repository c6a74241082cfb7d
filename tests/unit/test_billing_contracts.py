"""The billing topics' JSON Schemas (``schemas/billing/``): generated from the models, and
every event the rater and the credit note desk publish, and every valid input, fits them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from bastionary.rating.contracts import CONTRACTS, schema_files
from bastionary.rating.credit_note_desk import CreditNoteDesk
from bastionary.rating.customers import CustomerTerms
from bastionary.rating.rater import Rater
from bastionary.rating.subscriptions import SubscriptionEvent
from bastionary.rating.tax import Invoicing, Issuer, TaxProfile, TaxRate

from .test_credit_notes import ASKED, NOW, FakeNotes, Sent, request, standing
from .test_intake_parsers import VALID
from .test_rater import AFTER_EACH_MONTH, GRACE, METERED_ONLY, PRO, TOKENS, FakeBillingStore, FakePublisher, at
from .test_rater_timing import ADV, STEPS, store_on

DIRECTORY = Path(__file__).resolve().parents[2] / "schemas" / "billing"
VALIDATORS = {
    event_type: Draft202012Validator(
        __import__("json").loads(schema_files()[f"{name}.schema.json"]),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    for name, (types, _, _) in CONTRACTS.items()
    for event_type in types
}


def test_the_committed_schemas_are_the_generated_ones():
    committed = {path.name: path.read_bytes() for path in DIRECTORY.glob("*.schema.json")}
    assert committed == schema_files(), "run: .venv/bin/python -m bastionary.rating.contracts schemas/billing"


def check(event: dict) -> None:
    errors = sorted(VALIDATORS[event["type"]].iter_errors(event), key=str)
    assert not errors, (event["type"], [e.message for e in errors[:3]])


def test_everything_the_rater_publishes_fits_its_schema():
    store, publish = FakeBillingStore(), FakePublisher()
    store.subscribe("sub-1", "cust-1")
    store.subscribe("sub-m", "cust-m", plan="metered")
    store.use("cust-1", 1000, at(2024, 1, 15))
    store.use("cust-m", 1000, at(2024, 1, 10))
    store.use("cust-m", -1500, at(2024, 1, 20), ingested=at(2024, 2, 5))  # carried forward
    store.grant("g-promo", "cust-1", "12.50")
    store.grant("g-paid", "cust-1", "40.00", funding="paid")
    store.grant("g-lapsing", "cust-1", "5.00", expires_at=at(2024, 1, 20))
    store.topups["cust-1"] = {"USD": (Decimal(30), Decimal(100))}
    store.terms["cust-1"] = CustomerTerms({"name": "Acme", "address": {"country": "DE"}}, TaxProfile("DE"))
    store.events.append(SubscriptionEvent("sub-m", "cust-m", "canceled", "", at(2024, 1, 1), None, at(2024, 3, 1)))
    store.use("cust-m", 100, at(2024, 2, 10), ingested=at(2024, 3, 1, 1, 30))  # late: the final adjustment
    invoicing = Invoicing(issuer=Issuer(name="Seller"), taxes=[TaxRate(key="vat", name="VAT", rate=Decimal("0.19"))])
    rate = Rater(store, [PRO, METERED_ONLY], [TOKENS], GRACE, publish, invoicing=invoicing)
    for moment in AFTER_EACH_MONTH:
        asyncio.run(rate.run_once(moment + timedelta(hours=2)))
    types = {event["type"] for _, _, event in publish.delivered}
    assert types == {
        "bastionary.invoice.finalized.v1",
        "bastionary.credit.applied.v1",
        "bastionary.credit.expired.v1",
        "bastionary.credit.carried.v1",
        "bastionary.credit.topup_requested.v1",
    }
    assert any(e["data"]["kind"] == "final_adjustment" for e in publish.events("invoices"))
    for _, _, event in publish.delivered:
        check(event)


def test_every_credit_note_decision_fits_its_schema():
    notes = FakeNotes({"inv-1": standing(paid="100")})
    notes.pending = [("e1", ASKED, request(amount="60")), ("e2", ASKED, request(credit_note_id="cn-2", amount="60"))]
    sent = Sent()
    asyncio.run(CreditNoteDesk(notes, lambda rows: None, sent).run_once(NOW))
    assert [e["type"] for _, _, e in sent.events] == [
        "bastionary.credit_note.issued.v1",
        "bastionary.credit_note.rejected.v1",
    ]
    for _, _, event in sent.events:
        check(event)


@pytest.mark.parametrize("name", ["subscription", "credit", "purchase", "customer"])
def test_the_valid_inputs_fit_their_schemas(name):
    check(VALID[name])


def test_every_credit_limit_event_fits_its_schema():
    from bastionary.rating.spend import CreditLimit, SpendHistory, spend_events

    limit = CreditLimit(currency="USD", amount=Decimal(100), alert_at=[Decimal("0.5")])
    events = spend_events("c1", limit, Decimal(80), Decimal(30), None, SpendHistory(), NOW)
    events += spend_events("c1", limit, Decimal(0), Decimal(0), None, SpendHistory(changes=1), NOW)
    assert [e.kind for e in events] == ["threshold_crossed", "reached", "restored"]
    for event in events:
        check({"specversion": "1.0", "id": event.event_id, "source": "s", "type": event.event_type,
               "time": event.data["at"], "data": event.data})  # fmt: skip


def test_advance_and_progressive_invoices_fit_the_invoice_schema():
    publish = FakePublisher()
    for plan_key in ("adv", "steps"):
        store = store_on(plan_key)
        store.use("cust-1", 15000, at(2024, 1, 5))
        store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, at(2024, 2, 15)))
        rate = Rater(store, [ADV, STEPS], [TOKENS], GRACE, publish)
        for moment in (at(2024, 1, 1, 0, 1), at(2024, 1, 6), *AFTER_EACH_MONTH):
            asyncio.run(rate.run_once(moment + timedelta(hours=2)))
    kinds = {event["data"]["kind"] for event in publish.events("invoices")}
    assert kinds == {"advance", "progressive", "period"}
    lines = [line for event in publish.events("invoices") for line in event["data"]["lines"]]
    assert any(line.get("already_billed") for line in lines) and any(line.get("billing_timing") for line in lines)
    for _, _, event in publish.delivered:
        check(event)
