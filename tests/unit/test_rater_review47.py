"""The rater's republishing of what an earlier run stored unpublished (forty-seventh session)."""

from __future__ import annotations

import pytest

from bastionary.rating.publishing import PublishRefused
from tests.unit.test_rater import AFTER_JAN, FakeBillingStore, FakePublisher, PublishFailed, rater


class CountingStore(FakeBillingStore):
    def __init__(self) -> None:
        super().__init__()
        self.marks: list[int] = []  # invoices per mark_published call

    def mark_published(self, invoices):
        self.marks.append(len(invoices))
        super().mark_published(invoices)


def five_customers() -> CountingStore:
    store = CountingStore()
    for n in range(5):
        store.subscribe(f"sub-{n}", f"cust-{n}")
    return store


async def test_stored_invoices_are_republished_a_batch_at_a_time():
    # After an outage that left thousands stored, republishing waited for each invoice's
    # delivery and marked it on its own: one round trip each while the run held its lease.
    store, publish = five_customers(), FakePublisher()
    publish.fail(0)
    with pytest.raises(PublishFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    assert len(store.unpublished_documents()) == 5
    store.marks.clear()
    publish.heal()

    result = await rater(store, publish, batch_size=2).run_once(AFTER_JAN)

    assert result.republished == 5 and store.unpublished_documents() == []
    assert store.marks == [2, 2, 1]
    assert sorted(event["data"]["customer_id"] for event in publish.events("invoices")) == [
        f"cust-{n}" for n in range(5)
    ]


async def test_a_stored_invoice_the_broker_refuses_stays_unpublished_and_the_others_go(monkeypatch):
    store, publish = five_customers(), FakePublisher()
    publish.fail(0)
    with pytest.raises(PublishFailed):
        await rater(store, publish).run_once(AFTER_JAN)
    publish.heal()
    plain = FakePublisher.__call__

    async def refusing_cust_2(self, role, key, value):
        if b'"customer_id":"cust-2"' in value:
            raise PublishRefused("MessageSizeTooLargeError")
        return await plain(self, role, key, value)

    monkeypatch.setattr(FakePublisher, "__call__", refusing_cust_2)
    result = await rater(store, publish).run_once(AFTER_JAN)

    assert result.republished == 4
    assert [failure.customer_id for failure in result.refused] == ["cust-2"]
    assert len(store.unpublished_documents()) == 1
