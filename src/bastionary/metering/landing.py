"""Where a flush is planned and written: the sink decides *when* and in what order, an engine
does the work.

:class:`LocalFlushEngine` does it in the worker's own process (the default, and the only way
with chdb in the process). :class:`bastionary.metering.flush_process.FlushProcess` runs the
same engine in a process of the worker's own, which then owns the dedupe cache and its own
ClickHouse client; the sink cannot tell them apart. Each call is one step of the order that
:meth:`bastionary.metering.sink.UsageSink._land` documents, so a crash of either process
between calls is a crash of the worker at that step.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

import structlog

from bastionary.dedupe import Sighting
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.planning import Examiner, FlushPlan, FlushPlanner
from bastionary.metering.ports import DedupeCache, FlushMarker, MarkerRow, UsageStore
from bastionary.metering.readings import MeterIndex
from bastionary.metering.records import InboundRecord

log = structlog.get_logger(__name__)

PlanRequest = tuple[str, int, int, list[InboundRecord], int | None]
"""One partition's share of a flush: (topic, partition, log epoch, records, and the first offset
of the range it replays, or None if it replays none)."""


class FlushEngine(Protocol):
    """Every call blocks: the sink runs each one in a thread."""

    def recover(self, topic: str, partition: int) -> FlushMarker | None:
        """The partition's newest marker, once the dedupe cache agrees with ClickHouse."""
        ...

    def plan(self, requests: list[PlanRequest], rows_wanted: frozenset[str] | None = None) -> list[FlushPlan]:
        """A plan per request, in order. Each holds at least what the sink itself uses: its
        range, token, fingerprint, stats, dead letters, the customers its rollup rows are of,
        and the rollup rows of ``rows_wanted`` customers (of all when None; see
        :attr:`FlushPlan.rows_of`)."""
        ...

    def insert_markers(self, rows: list[MarkerRow]) -> None: ...

    def write(self, plans: list[FlushPlan]) -> None:
        """The plans' events, rollups and dedupe keys, in that order per plan. Only plans of
        the latest :meth:`plan` call; any of them the sink dropped are never written."""
        ...

    def purge_expired(self) -> int: ...

    def close(self) -> None: ...


class LocalFlushEngine:
    def __init__(
        self,
        store: UsageStore,
        dedupe: DedupeCache,
        meters: MeterIndex,
        limits: RecordLimits,
        dedupe_horizon: timedelta,
        examiner: Examiner | None = None,
        closers: list[Callable[[], None]] | None = None,
    ):
        self.closers = closers or []  # what this engine was given to own: closed with it
        self.store = store
        self.dedupe = dedupe
        self.dedupe_horizon = dedupe_horizon
        self.planner = FlushPlanner(meters, dedupe, limits, examiner)

    def recover(self, topic: str, partition: int) -> FlushMarker | None:
        marker = self.store.latest_marker(topic, partition)
        landed = (marker.log_epoch, marker.last_offset) if marker else None
        cached = self.dedupe.high_water(topic, partition)
        if cached is not None and (landed is None or cached > landed):
            # The cache knows offsets ClickHouse does not (a new or reset database): drop it.
            self.dedupe.forget_partition(topic, partition)
            cached = None
        if marker is not None and landed is not None and (cached is None or cached < landed):
            # Every key ClickHouse holds past the cache's mark is read back, but the mark moves
            # only to the end of the flush before the newest: the newest marker's flush may not
            # have landed (the sink replays it), so its keys may not all be in ClickHouse yet.
            # A mark through it would stop every later recovery from reading them back, if this
            # cache's owner never replays that range itself (the partition moves to another
            # worker or flush process first): a repeat from that range would count again. The
            # replay's own write moves the mark through the range once it has landed.
            before_newest = (marker.log_epoch, marker.first_offset - 1)
            self._backfill_dedupe(
                topic, partition, cached, before_newest if cached is None else max(cached, before_newest)
            )
        return marker

    def _backfill_dedupe(
        self, topic: str, partition: int, after: tuple[int, int] | None, mark: tuple[int, int]
    ) -> None:
        """Every key ClickHouse holds past ``after``, with the cache's mark then at ``mark``."""
        # The horizon runs in broker time, as the verdicts do: a partition stamped weeks behind
        # the wall clock (re-imported usage) still needs every key within it.
        rows = self.store.sightings_after(topic, partition, after, self.dedupe_horizon)
        entries = [
            (
                self.dedupe.key(topic, partition, row.source, row.event_id),
                Sighting(
                    row.ingest_offset, row.ingest_index, row.seen_at, bytes.fromhex(row.payload_hash), row.ingest_epoch
                ),
            )
            for row in rows
        ]
        self.dedupe.record(topic, partition, entries, mark[1], epoch=mark[0])
        log.info("dedupe cache backfilled", topic=topic, partition=partition, keys=len(entries), after=after)

    def plan(self, requests: list[PlanRequest], rows_wanted: frozenset[str] | None = None) -> list[FlushPlan]:
        # Every row: in this process the rows cost nothing to hand over.
        return [
            self.planner.plan(topic, partition, epoch, records, replays_from)
            for topic, partition, epoch, records, replays_from in requests
        ]

    def insert_markers(self, rows: list[MarkerRow]) -> None:
        self.store.insert_markers(rows)

    def write(self, plans: list[FlushPlan]) -> None:
        for plan in plans:
            self.store.insert_events(plan.event_rows, plan.token + "/events")
            self.store.insert_rollups(plan.rollup_rows, plan.token + "/rollups")
            self.dedupe.record(plan.topic, plan.partition, plan.sightings, plan.last_offset, epoch=plan.log_epoch)
            log.debug(
                "flush landed",
                topic=plan.topic,
                partition=plan.partition,
                first_offset=plan.first_offset,
                last_offset=plan.last_offset,
                accepted=plan.stats.accepted,
            )

    def purge_expired(self) -> int:
        return self.dedupe.purge_expired()

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                log.exception("closing the flush engine's storage failed")
