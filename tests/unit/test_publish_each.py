"""The one publishing loop the rater and the credit-note desk share."""

from __future__ import annotations

import asyncio

import pytest

from bastionary.rating.publishing import PublishRefused, publish_each


class BrokerAway(Exception):
    pass


async def test_refused_records_are_set_aside_and_the_others_delivered_in_order():
    loop = asyncio.get_running_loop()
    refused: list[tuple[str, str]] = []

    async def enqueue(item: str):
        if item == "too-large-to-enqueue":
            raise PublishRefused("MessageSizeTooLargeError")
        delivery = loop.create_future()
        if item == "too-large-for-the-broker":
            delivery.set_exception(PublishRefused("MESSAGE_TOO_LARGE"))
        else:
            delivery.set_result(None)
        return delivery

    items = ["a", "too-large-to-enqueue", "b", "too-large-for-the-broker", "c"]
    delivered = await publish_each(items, enqueue, lambda item, exc: refused.append((item, str(exc))))
    assert delivered == ["a", "b", "c"]
    assert refused == [
        ("too-large-to-enqueue", "MessageSizeTooLargeError"),
        ("too-large-for-the-broker", "MESSAGE_TOO_LARGE"),
    ]


async def test_another_failure_is_raised_only_once_every_delivery_was_waited_for():
    loop = asyncio.get_running_loop()
    waited: list[str] = []

    async def later(item: str) -> None:
        await asyncio.sleep(0.01)
        waited.append(item)
        if item == "lost":
            raise BrokerAway(item)

    async def enqueue(item: str):
        return loop.create_task(later(item))

    with pytest.raises(BrokerAway):
        await publish_each(["lost", "slow-1", "slow-2"], enqueue, lambda item, exc: None)
    assert sorted(waited) == ["lost", "slow-1", "slow-2"]
