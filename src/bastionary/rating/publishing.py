"""How the rater and the credit-note desk publish what they stored.

Both store a decision before publishing it (the store is the record; a run republishes what is
stored unpublished), and both must not let one record the broker will never take stop the
others: that record is set aside, named, and offered again next run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

# (topic, key, value) -> once enqueued, the delivery to wait for
Publish = Callable[[str, str, bytes], Awaitable[Awaitable[object]]]

Item = TypeVar("Item")


class PublishRefused(Exception):
    """``publish`` raises it (when enqueuing, or from the delivery) for a record the producer or
    the broker will never take, such as one larger than they take. Unlike a broker away, the
    next run cannot do better: it costs that record, not every customer's run."""


async def publish_each(
    items: Sequence[Item],
    enqueue: Callable[[Item], Awaitable[Awaitable[object]]],
    refused: Callable[[Item, PublishRefused], None],
) -> list[Item]:
    """Enqueue every item's publishing before waiting for any, and return the items delivered,
    in order. One refused for good, when enqueued or delivered, goes to ``refused`` and is left
    out; any other failure is raised once every delivery has been waited for, so that none
    fails unretrieved behind another's failure (the caller's next run republishes)."""
    enqueued: list[tuple[Item, Awaitable[object]]] = []
    for item in items:
        try:
            enqueued.append((item, await enqueue(item)))
        except PublishRefused as exc:
            refused(item, exc)
    outcomes = await asyncio.gather(*(delivery for _, delivery in enqueued), return_exceptions=True)
    delivered = []
    for (item, _), outcome in zip(enqueued, outcomes, strict=True):
        if isinstance(outcome, PublishRefused):
            refused(item, outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            delivered.append(item)
    return delivered
