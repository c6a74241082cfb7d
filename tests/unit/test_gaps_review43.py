"""A seek while a fetch is delivered (bastionary.worker.direct_delivery): the partition is read
again from the seek's target, not from where the stale rest of the fetch would put it."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from bastionary.worker import direct_delivery
from bastionary.worker.direct_delivery import DirectDeliveryConsumer

USAGE = TP("usage.events", 0)
OTHER = TP("usage.events", 1)


class _Consumer:
    """What the fetch loop and ``seek`` read of Faust's consumer, over a log where every
    offset holds a record. Each fetch brings ten records of each partition from its position;
    the consumer skips 10..14 of ``USAGE`` once, as seen after a broker restart under load."""

    consumer_stopped_errors = ()
    should_stop = False
    _commit_every = None
    seek = DirectDeliveryConsumer.seek

    def __init__(self, fetches: int) -> None:
        self._fetches = fetches
        self._stopped = asyncio.Event()
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._sought: set[TP] = set()
        self.position = {USAGE: 0, OTHER: 0}
        self.skip_once = {10: 15}
        self.delivered: dict[TP, list[int]] = {USAGE: [], OTHER: []}
        self.on_delivery: Any = None
        self.diag = SimpleNamespace(set_flag=lambda _flag: None, unset_flag=lambda _flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda _topic: False))
        self.log = SimpleNamespace(dev=lambda *_args: None, exception=logging.getLogger(__name__).exception)

    async def _seek(self, tp: TP, offset: int) -> None:
        self.position[tp] = offset  # aiokafka's: the next fetch starts there

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        if not self._fetches:
            self._stopped.set()
            return
        self._fetches -= 1
        batches = {}
        for tp, position in self.position.items():
            start = self.skip_once.pop(position, position) if tp == USAGE else position
            batches[tp] = range(start, start + 10)
            self.position[tp] = start + 10
        for usage, other in zip(batches[USAGE], batches[OTHER], strict=True):
            yield USAGE, SimpleNamespace(tp=USAGE, offset=usage, topic=USAGE.topic)
            yield OTHER, SimpleNamespace(tp=OTHER, offset=other, topic=OTHER.topic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def callback(self, message: Any) -> None:
        self.delivered[message.tp].append(message.offset)
        if self.on_delivery is not None:
            await self.on_delivery(message.tp, message.offset)

    async def _race_with_flow(self, rest: Any) -> None:
        await rest

    async def rewind(self, tp: TP, offset: int) -> None:
        # KafkaPartitionLog.rewind: forget Faust's per-partition bookkeeping, then seek.
        self._read_offset.pop(tp, None)
        await self.seek(tp, offset)

    async def drain(self) -> None:
        await DirectDeliveryConsumer._drain_messages(self, SimpleNamespace(_stopped=asyncio.Event()))  # type: ignore[arg-type]


async def test_a_rewind_from_inside_a_delivery_reads_the_skipped_records_next() -> None:
    consumer = _Consumer(fetches=3)

    async def sink_finds_the_skip(tp: TP, offset: int) -> None:
        if tp == USAGE and offset == 15 and consumer.delivered[USAGE].count(15) == 1:
            await asyncio.sleep(0)  # the log probe: a record sits at 10
            await consumer.rewind(USAGE, 10)

    consumer.on_delivery = sink_finds_the_skip
    await consumer.drain()
    # The rest of the fetch that held 15 is stale; the next fetch starts at the rewind's target.
    assert consumer.delivered[USAGE] == [*range(10), 15, *range(10, 20)]
    # A partition nobody sought reads on undisturbed.
    assert consumer.delivered[OTHER] == list(range(30))


async def test_a_rewind_at_the_loops_yield_drops_the_rest_of_the_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    # The log check rewinds between two records of a fetch, while the loop lets other tasks in.
    consumer = _Consumer(fetches=2)
    consumer.skip_once.clear()
    ticks = iter(range(10**6))
    monkeypatch.setattr(direct_delivery, "time", SimpleNamespace(monotonic=lambda: next(ticks) * 0.01))
    rewound = False
    real_sleep = asyncio.sleep

    async def yield_with_a_log_check(seconds: float) -> None:
        nonlocal rewound
        if consumer.delivered[USAGE] == [0, 1, 2, 3, 4] and not rewound:
            rewound = True
            await consumer.rewind(USAGE, 3)
        await real_sleep(seconds)

    monkeypatch.setattr(direct_delivery.asyncio, "sleep", yield_with_a_log_check)
    await consumer.drain()
    assert rewound
    assert consumer.delivered[USAGE] == [0, 1, 2, 3, 4, *range(3, 13)]
    assert consumer.delivered[OTHER] == list(range(20))
