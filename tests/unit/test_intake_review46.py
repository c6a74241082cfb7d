"""Billing intake, review 46.

A ``billing_email`` is checked at intake as dunning reads it: set as the ``To`` header, it must
read back as exactly this one address. Before, the intake took ``<a@x.example>``,
``a(b@x.example``, ``a,b@x.example`` or ``"a"@x.example``, which dunning then refused; and since
the latest non-empty address counts, one such address replaced a working one.

A grant or purchase of a ``grant_id`` its customer holds already with other terms is refused
(``invalid_data`` on billing.dlq, 400 over HTTP). Before, it was stored: it granted nothing (the
first grant counts) but the ledger listed it and sums of what was bought counted it twice. An
identical repeat, a retry under a new event id, is still taken and changes nothing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bastionary.dunning.notify.email import EmailContent, SmtpConfig, build_message
from bastionary.rating import events
from bastionary.rating.events import InvalidBillingEvent, SubscriptionData, parse_credit, parse_subscription
from bastionary.rating.rows import LedgerRow
from bastionary.worker.api.writes import WRITES
from tests.unit.test_intake_guard import App, DeadLetters, Stream
from tests.unit.test_owners import OwnedStore, record, service

START = "2026-01-01T00:00:00Z"
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _subscription(billing_email: object) -> bytes:
    data = {"subscription_id": "s-1", "customer_id": "c-1", "plan": "p", "start": START}
    envelope = {"specversion": "1.0", "id": "e-1", "source": "test", "type": "bastionary.subscription.created.v1"}
    return orjson.dumps(envelope | {"time": START, "data": data | {"billing_email": billing_email}})


def _dunning_sends_to(address: str) -> bool:
    notice = {"recipient_email": address, "notice_id": "n-1", "invoice_id": "inv-1"}
    try:
        build_message(SmtpConfig("localhost", 25, "billing@acme.example"), notice, EmailContent("s", "t", "<p>h</p>"))
    except ValueError:
        return False
    return True


# --- billing_email ----------------------------------------------------------------------

REFUSED_BY_DUNNING = [
    "<a@x.example>",
    "a(b@x.example",
    "a,b@x.example",
    '"a"@x.example',
    "a;b@x.example",
    "x<ap@acme.example",
    "a@x..example",
    "a@.x.example",
    "a@x.example.",
    "a@x.example\n",
]


@pytest.mark.parametrize("address", REFUSED_BY_DUNNING)
def test_a_billing_email_dunning_would_refuse_is_invalid_data(address):
    assert not _dunning_sends_to(address)
    with pytest.raises(InvalidBillingEvent) as refused:
        parse_subscription(_subscription(address), {"p"})
    assert refused.value.code == "invalid_data"
    assert "billing_email is not one plain address" in str(refused.value)


@pytest.mark.parametrize("address", ["ap@acme.example", "jürgen@bücher.example", "a+b@x.example", "a@localhost"])
def test_a_plain_billing_email_is_taken_and_dunning_sends_to_it(address):
    _, _, data = parse_subscription(_subscription(address), {"p"})
    assert data.billing_email == address
    assert _dunning_sends_to(address)


EMAILISH = st.text(alphabet=st.sampled_from('ab.@<>(),;:"\\ \t\r\n\x00\x7fé[]'), max_size=20)


@given(st.one_of(st.text(max_size=300), EMAILISH, EMAILISH.map(lambda s: s + "@x.example")))
def test_any_text_is_taken_or_a_validation_error_and_what_is_taken_dunning_sends_to(text):
    try:
        data = SubscriptionData(subscription_id="s", customer_id="c", billing_email=text)
    except ValidationError:
        return
    assert data.billing_email == text
    assert _dunning_sends_to(text)


# --- a grant id granted again -------------------------------------------------------------

GRANT = {"grant_id": "g-1", "customer_id": "a", "amount": "5.00", "currency": "USD", "effective_at": WHEN.isoformat()}
PURCHASE = GRANT | {"price_paid": "4.00", "payment_reference": "pay-1"}
GRANTED, PURCHASED, VOIDED = (f"bastionary.credit.{kind}.v1" for kind in ("granted", "purchased", "voided"))


class Store(OwnedStore):
    def first_grant(self, grant_id: str) -> LedgerRow | None:
        opening = (r for r in self.ledger if r.grant_id == grant_id and r.kind in ("granted", "purchased"))
        return next(opening, None)


def _intake(records: list) -> tuple[DeadLetters, Store, Stream, App]:
    dead_letters, store, app = DeadLetters(), Store(), App()
    stream = Stream(records)
    asyncio.run(service(store, dead_letters, app)._credit_intake(stream))
    return dead_letters, store, stream, app


def test_the_intake_refuses_a_grant_of_a_held_id_with_other_terms_and_takes_a_retry():
    records = [
        record(0, GRANTED, GRANT, WHEN),
        record(1, GRANTED, GRANT | {"amount": "500.00"}, WHEN),
        record(2, GRANTED, GRANT | {"currency": "EUR"}, WHEN),
        record(3, PURCHASED, PURCHASE, WHEN),  # other funding
        record(4, GRANTED, GRANT | {"expires_at": "2026-06-01T00:00:00Z"}, WHEN),
        record(5, GRANTED, GRANT | {"effective_at": "2026-02-01T00:00:00Z"}, WHEN),
        record(6, GRANTED, GRANT | {"priority": 1}, WHEN),
        record(7, GRANTED, GRANT | {"amount": "5"}, WHEN),  # the same amount, spelt otherwise: a retry
        record(8, VOIDED, {"grant_id": "g-1", "customer_id": "a"}, WHEN),
    ]
    dead_letters, store, stream, app = _intake(records)
    assert [(sent[1], sent[2]) for sent in dead_letters.sent] == [(n, "invalid_data") for n in range(1, 7)]
    assert [(row.movement_id, row.kind) for row in store.ledger] == [
        ("evt-0", "granted"),
        ("evt-7", "granted"),
        ("evt-8", "voided"),
    ]
    assert stream.acked == list(range(9)) and not app.crashes


def test_the_intake_refuses_a_purchase_of_a_held_id_with_another_price_or_payment():
    records = [
        record(0, PURCHASED, PURCHASE, WHEN),
        record(1, PURCHASED, PURCHASE | {"price_paid": "5.00"}, WHEN),
        record(2, PURCHASED, PURCHASE | {"payment_reference": "pay-2"}, WHEN),
        record(3, GRANTED, GRANT, WHEN),  # other funding
        # A retry without effective_at, whose default (the event's time) is its own: taken.
        record(4, PURCHASED, {k: v for k, v in PURCHASE.items() if k != "effective_at"}, WHEN + timedelta(hours=1)),
    ]
    dead_letters, store, stream, app = _intake(records)
    assert [(sent[1], sent[2]) for sent in dead_letters.sent] == [(n, "invalid_data") for n in (1, 2, 3)]
    assert [row.movement_id for row in store.ledger] == ["evt-0", "evt-4"]
    assert stream.acked == list(range(5)) and not app.crashes


def test_another_customer_s_grant_id_is_still_customer_mismatch_whatever_its_terms():
    records = [record(0, GRANTED, GRANT, WHEN), record(1, GRANTED, GRANT | {"customer_id": "b", "amount": "9"}, WHEN)]
    dead_letters, _, _, _ = _intake(records)
    assert [(sent[1], sent[2]) for sent in dead_letters.sent] == [(1, "customer_mismatch")]


def test_stored_times_compare_to_the_millisecond_the_ledger_keeps():
    sent = GRANT | {"effective_at": "2026-01-01T00:00:00.123456Z", "expires_at": "2026-03-01T00:00:00.000999Z"}
    _, kind, data = parse_credit(orjson.dumps({**_envelope(GRANTED), "data": sent}))
    stored = LedgerRow(
        "evt-0", "granted", "g-1", "a", Decimal("5.000000000"), "USD", 100,
        datetime(2026, 1, 1, 0, 0, 0, 123000), datetime(2026, 3, 1), "", WHEN,
    )  # fmt: skip
    assert events.grant_terms_differing(kind, data, stored) == []
    later = stored._replace(effective_at=datetime(2026, 1, 1, 0, 0, 0, 125000))
    assert events.grant_terms_differing(kind, data, later) == ["effective_at"]


def _envelope(event_type: str) -> dict[str, str]:
    return {"specversion": "1.0", "id": "e-2", "source": "test", "type": event_type, "time": START}


class Reads:
    def __init__(self, first: LedgerRow | None):
        self.first = first

    def grant_owner(self, grant_id: str) -> str | None:
        return self.first.customer_id if self.first else None

    def first_grant(self, grant_id: str) -> LedgerRow | None:
        return self.first


@pytest.mark.parametrize(
    ("path", "event_type", "body"),
    [("/v1/credit-grants", GRANTED, GRANT | {"amount": "7.00"}), ("/v1/credit-purchases", PURCHASED, PURCHASE)],
)
def test_the_write_api_refuses_a_held_grant_id_with_other_terms_before_publishing(path, event_type, body):
    [write] = [w for w in WRITES if w.path == path]
    _, first_kind, first = parse_credit(orjson.dumps({**_envelope(GRANTED), "data": GRANT}))
    stored = events.credit_row(
        events.BillingEvent.model_validate({**_envelope(GRANTED), "data": GRANT}), first_kind, first, WHEN
    )
    backend = SimpleNamespace(billing_reads=lambda: Reads(stored))
    _, _, data = write.check(backend, orjson.dumps({**_envelope(event_type), "data": body}), None)
    assert write.check_stored is not None
    with pytest.raises(InvalidBillingEvent) as refused:  # answered 400 invalid_event, reason invalid_data
        write.check_stored(backend, data)
    assert refused.value.code == "invalid_data"
    # The same terms again (a retry without an Idempotency-Key) and a first grant pass.
    _, _, same = write.check(backend, orjson.dumps({**_envelope(GRANTED), "data": GRANT}), None)
    [grants] = [w for w in WRITES if w.path == "/v1/credit-grants"]
    assert grants.check_stored is not None
    grants.check_stored(backend, same)
    grants.check_stored(SimpleNamespace(billing_reads=lambda: Reads(None)), same)
