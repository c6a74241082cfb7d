"""A worker's flushes split by partition over several flush engines (``BASTIONARY_FLUSH_PROCESSES``).

One flush process plans and writes every partition's share of a flush in turn, so it caps a
worker at what one interpreter lands (about 44,000 batch events/s, ``bench --stages``). Here
each partition belongs to one of several engines, each a flush process with a dedupe cache
of its own, and a flush's step runs in all of them at once: a partition's plan depends on
nothing but its records and its own dedupe keys, which only its engine holds.

The sink cannot tell this from one engine. Each call returns once every engine it involved
has finished, so a step has the same crash effects as in one engine (see
:meth:`bastionary.metering.sink.UsageSink._land`): a step that fails in one engine fails the
flush, which the worker replays after its restart, whatever the other engines landed (their
inserts are dropped by token on replay, their dedupe keys match their own records).

Which engine holds a partition depends only on (topic, partition) and the number of engines,
never on the worker's assignment, so a partition that comes back finds its keys where it left
them. After the number changes, a partition may find a cache that lacks its newest keys: its
recovery reads them back from ClickHouse, as after a rebalance to a new worker.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import structlog

from bastionary.metering.landing import FlushEngine, PlanRequest
from bastionary.metering.planning import FlushPlan
from bastionary.metering.ports import FlushMarker, MarkerRow

log = structlog.get_logger(__name__)

T = TypeVar("T")


def shard_of(topic: str, partition: int, shards: int) -> int:
    """The engine of (topic, partition): stable across processes and restarts (``hash()`` of a
    str is not), and consecutive partitions of a topic go to consecutive engines."""
    return (zlib.crc32(topic.encode()) + partition) % shards


class ShardedFlushEngine:
    """A :class:`~bastionary.metering.landing.FlushEngine` over several, split by partition."""

    def __init__(self, engines: Sequence[FlushEngine]):
        if not engines:
            raise ValueError("a sharded flush engine needs at least one engine")
        self.engines = list(engines)
        self._pool = ThreadPoolExecutor(len(self.engines), thread_name_prefix="flush-shard")

    def _shard(self, topic: str, partition: int) -> int:
        return shard_of(topic, partition, len(self.engines))

    def _in_each(self, work: Mapping[int, Callable[[], T]]) -> dict[int, T]:
        """Run each engine's share at once; return when all have ended, raising the first error.

        Waiting for all before raising keeps a failed step a step: nothing of it is still
        running in another engine when the sink hears of the failure."""
        futures: dict[int, Future[T]] = {shard: self._pool.submit(call) for shard, call in work.items()}
        results: dict[int, T] = {}
        failure: BaseException | None = None
        for shard, future in futures.items():
            try:
                results[shard] = future.result()
            except BaseException as exc:
                log.exception("a flush engine failed its step", engine=shard)
                failure = failure or exc
        if failure is not None:
            raise failure
        return results

    def recover(self, topic: str, partition: int) -> FlushMarker | None:
        return self.engines[self._shard(topic, partition)].recover(topic, partition)

    def plan(self, requests: list[PlanRequest], rows_wanted: frozenset[str] | None = None) -> list[FlushPlan]:
        shares: dict[int, list[int]] = {}  # engine -> indexes of its requests
        for index, (topic, partition, *_) in enumerate(requests):
            shares.setdefault(self._shard(topic, partition), []).append(index)
        # Every engine plans, even with no request: a plan call also drops the plans of the last
        # call that were never written (FlushEngine.write), in every engine alike.
        work = {
            shard: partial(engine.plan, [requests[i] for i in shares.get(shard, [])], rows_wanted)
            for shard, engine in enumerate(self.engines)
        }
        planned = self._in_each(work)
        plans: list[FlushPlan | None] = [None] * len(requests)
        for shard, indexes in shares.items():
            for index, plan in zip(indexes, planned[shard], strict=True):
                plans[index] = plan
        return [plan for plan in plans if plan is not None]

    def insert_markers(self, rows: list[MarkerRow]) -> None:
        # One insert for the flush's markers, as with one engine: any engine's store holds them.
        self.engines[0].insert_markers(rows)

    def write(self, plans: list[FlushPlan]) -> None:
        shares: dict[int, list[FlushPlan]] = {}
        for plan in plans:
            shares.setdefault(self._shard(plan.topic, plan.partition), []).append(plan)
        self._in_each({shard: partial(self.engines[shard].write, share) for shard, share in shares.items()})

    def purge_expired(self) -> int:
        purged = self._in_each({shard: engine.purge_expired for shard, engine in enumerate(self.engines)})
        return sum(purged.values())

    def close(self) -> None:
        try:
            self._in_each({shard: engine.close for shard, engine in enumerate(self.engines)})
        finally:
            self._pool.shutdown(wait=True)
