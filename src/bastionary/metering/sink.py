"""The usage sink: buffered records of each partition, flushed to ClickHouse exactly once.

Kafka delivers at least once and the embedded broker has no transactions, so exactness
comes from four facts, kept together here:

1. Every flush covers a contiguous offset range [a, b] of one partition, and its marker
   row (``ingest_progress``) is written before any of its data.
2. Its data inserts carry deduplication tokens derived from (topic, partition, epoch, a, b),
   and everything in them is a pure function of the records in [a, b] (validation, dedupe
   and windows use the broker timestamp, never the wall clock).
3. Offsets are acked to Kafka only after the flush has fully landed.
4. Offsets are trusted only while the partition is the log they were read from: before a
   flush extends what has landed, the broker must still hold the last landed record (the
   anchor, see :mod:`bastionary.metering.logs`). A replaced log opens a new epoch.

So when a worker starts or takes a partition over, the newest marker names the one flush
that may be incomplete; it is replayed over exactly the same range, ClickHouse drops the
inserts that had landed, and the rest land once. Records before ``a`` are done and skipped.

No record can stop a partition: whatever one record holds, its processing ends in rows or
in a dead letter with a reason class, ``internal_error`` included (a bug of ours costs that
record, with an ERROR log, never the partition).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bastionary.metering.landing import FlushEngine
from bastionary.metering.logs import Anchor, LogProbe, PartitionLog
from bastionary.metering.planning import FlushPlan
from bastionary.metering.ports import FlushMarker, RollupRow
from bastionary.metering.records import Admission, DeadLetter, FlushStats, InboundRecord

log = structlog.get_logger(__name__)

TopicPartition = tuple[str, int]


DeadLetterSender = Callable[[list[DeadLetter]], Awaitable[None]]


@dataclass(frozen=True)
class LandedFlush:
    """What listeners hear once a flush of one partition has landed (under the flush lock)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    replayed: bool  # it may have landed before, partly or whole: counters derived from it must re-read
    rollup_rows: list[RollupRow]  # every row, or (rows_of set) the rows of those customers
    customers: frozenset[str]  # every customer with a rollup row in this flush
    rows_of: frozenset[str] | None = None  # None: rollup_rows holds every row (see UsageSink.rows_wanted)


@dataclass
class _PartitionState:
    epoch: int
    done_through: int  # every offset up to here has fully landed
    anchor: Anchor | None  # the last landed record: the log must still hold it
    replay: FlushMarker | None  # the newest flush, possibly incomplete: redo it as one unit
    buffer: list[InboundRecord] = field(default_factory=list)
    rewind_to: int | None = None  # after a log reset: records are stale until this offset comes
    rewound_at: float = 0.0
    active_at: float = field(default_factory=time.monotonic)  # last record admitted or flush landed
    buffered_since: float | None = None  # when the oldest unlanded record was admitted
    # When the oldest record of a flush still landing was admitted: taken out of the buffer,
    # it has not landed, and a flush that hangs must show in /healthz.
    landing_since: float | None = None
    # The last offset admitted, buffered or in a flush still landing; None: done_through.
    read_through: int | None = None
    # The log's end and done_through when the partition was last resumed as stalled. While
    # neither has moved, the consumer has read to that end: the offsets past what landed hold
    # no record it is given (a transactional producer's commit and abort markers).
    resumed_at: tuple[int | None, int] | None = None


@dataclass(frozen=True)
class PartitionStatus:
    """What /healthz and the metrics report per owned partition."""

    epoch: int
    done_through: int
    buffered: int
    seconds_idle: float  # since a record was last admitted or a flush last landed
    seconds_unlanded: float  # how long the oldest buffered record has waited (0: none)
    rewinding: bool


@dataclass(frozen=True)
class SinkConfig:
    worker_id: str
    log_epoch: int  # the lowest epoch a partition may have (embedded broker start, or a setting)
    # A rewound partition whose first record has not come by then is rewound again, and one
    # whose log holds records past what landed, none of them coming, is read on from there.
    rewind_retry_seconds: float = 10.0


class LogNotAnswering(RuntimeError):
    """The broker did not answer a log probe; nothing may land until it does."""


class FlushRefused(RuntimeError):
    """An earlier flush of this sink failed: nothing more may land until the worker restarts."""


class UsageSink:
    def __init__(
        self,
        engine: FlushEngine,
        send_dead_letters: DeadLetterSender,
        config: SinkConfig,
        partition_log: PartitionLog,
        on_flushed: Callable[[str, int, FlushStats], None] | None = None,
    ):
        self.engine = engine  # plans and writes; this class decides when, and in what order
        self.send_dead_letters = send_dead_letters
        self.config = config
        self.partition_log = partition_log
        self.on_flushed = on_flushed
        # Called with what each flush landed, under the flush lock: what keeps state derived
        # from the rollups (entitlements) can hold ``lock`` to read ClickHouse without a flush
        # landing halfway through its read.
        self.listeners: list[Callable[[list[LandedFlush]], None]] = []
        # Whose rollup rows the listeners need, asked under the flush lock as each flush is
        # planned; None: everyone's. An engine in another process then sends back only those
        # (the rest are written all the same), and the listeners hear every flush's customers.
        self.rows_wanted: Callable[[], frozenset[str]] | None = None
        self.on_log_reset: Callable[[str, int], None] | None = None
        self.lock = asyncio.Lock()
        self._partitions: dict[TopicPartition, _PartitionState] = {}
        self._recovering: dict[TopicPartition, asyncio.Lock] = {}
        # How often each partition was released: a recovery that a release overtook is void.
        self._releases: dict[TopicPartition, int] = {}
        # Kept beside the buffers, not summed from them: the intake asks after every record.
        self._buffered_records = 0
        self._buffered_bytes = 0
        self._failed_flush: BaseException | None = None
        # The last flush was put off (its anchor probe went unanswered), not merely short of
        # flushable records (a replay waiting for the rest of its range): the intake holds its
        # reader for the one, since reading on would only grow the buffers, and never for the
        # other, whose missing records would then never be read.
        self.flush_put_off = False

    # -- intake --------------------------------------------------------------------------

    async def admit(self, record: InboundRecord) -> Admission:
        tp = (record.topic, record.partition)
        state = self._partitions.get(tp) or await self._state(tp, self._releases.get(tp, 0))
        if state is None:
            return Admission.STALE  # released since it was delivered: its next owner reads it
        if state.rewind_to is not None:
            if record.offset != state.rewind_to:
                # Read before the rewind took effect (or a rewind not yet asked for).
                if not state.rewound_at:
                    await self._rewind(tp, state)
                return Admission.STALE
            state.rewind_to = None
        admission = self._admit_in_order(state, record)
        if admission is not None:
            return admission
        state.active_at = time.monotonic()
        expected = (state.done_through if state.read_through is None else state.read_through) + 1
        if await self._skipped(tp, state, expected, record.offset):
            return Admission.STALE
        return self._buffer(state, record)

    def admit_now(self, record: InboundRecord) -> Admission | None:
        """:meth:`admit` without awaiting, for the common case: the next record of a known
        partition. None when the record needs :meth:`admit` (a partition not yet recovered, a
        rewind under way, or a gap in the offsets to ask the log about); nothing changed then."""
        state = self._partitions.get((record.topic, record.partition))
        if state is None or state.rewind_to is not None:
            return None
        return self._admit_in_order(state, record)

    def _admit_in_order(self, state: _PartitionState, record: InboundRecord) -> Admission | None:
        """Where ``record`` falls against what the partition has read and landed; None for a
        gap in the offsets (the log must be asked; nothing changed), unless it is Kafka
        resuming right after a replayed range (see :func:`_resumes_past_replay`)."""
        read_through = state.done_through if state.read_through is None else state.read_through
        if record.offset > read_through + 1 and not _resumes_past_replay(state, record):
            return None
        state.active_at = time.monotonic()
        if record.offset <= state.done_through:
            return Admission.LANDED
        if record.offset <= read_through:
            return Admission.STALE  # delivered again after a seek: the copy read first lands
        return self._buffer(state, record)

    def _buffer(self, state: _PartitionState, record: InboundRecord) -> Admission:
        state.read_through = record.offset
        if not state.buffer:
            state.buffered_since = state.active_at
        state.buffer.append(record)
        self._buffered_records += 1
        self._buffered_bytes += len(record.value or b"")
        return Admission.BUFFERED

    async def _skipped(self, tp: TopicPartition, state: _PartitionState, expected: int, delivered: int) -> bool:
        """Did the consumer skip records before this one? Then it is read again from ``expected``.

        Offsets may have gaps (transaction markers, compaction), so the log is asked whether
        a record sits at ``expected``. A flush covers a contiguous range by its marker, so a
        record that was skipped and not caught would never be counted. Seen after a broker
        restart under load: the consumer read a new log's first record, then went on from an
        offset the old log had reached.

        Unanswered, the record is dropped unacked and read again, as after a rewind: the
        records fetched after it would otherwise ask about the same gap, and an answer "no
        record at ``expected``" would buffer the next of them, past this one, which the
        partition's marker would then cover without it.
        """
        epoch = state.epoch
        try:
            first = await self._first_record_from(tp, expected)
        except LogNotAnswering:
            if state.epoch != epoch:
                return True  # as below
            state.rewind_to = delivered  # it is in the log: the consumer just read it
            await self._rewind(tp, state)
            return True
        if state.epoch != epoch:
            # A flush or the log check found the log replaced while it was asked (they hold the
            # lock, not this): the new epoch reads the new log from its start, this record with
            # it. Buffered now, past that start, it made the records before it STALE when the
            # rewind brought them (before 2026-12-08): never counted.
            return True
        if first is None or first >= delivered:
            return False  # nothing there: a real gap
        expected = first
        log.warning(
            "partition skipped records; reading them again",
            topic=tp[0],
            partition=tp[1],
            expected_offset=expected,
            delivered_offset=delivered,
        )
        # As after a log reset: what was fetched past the gap is stale until ``expected`` comes.
        state.rewind_to = expected
        await self._rewind(tp, state)
        return True

    async def _first_record_from(self, tp: TopicPartition, offset: int) -> int | None:
        """The offset of the log's first record at or past ``offset``, None if none was read.

        Not only ``offset`` itself: a transaction marker or a compacted offset may hold no
        record there, or retention may have removed it, while records follow it. Asked at
        ``offset`` alone, the jump was taken for the log's own gap, and the flush's range
        covered those records without them (before 2026-12-07). Below the log's start the
        start is asked in turn (it may hold a marker too)."""
        probe = (await self._probe({tp: offset}))[tp]
        if probe.fingerprint is not None:
            return offset
        if offset < probe.log_start:
            return await self._first_record_from(tp, probe.log_start)
        return probe.next_record

    def buffered(self) -> int:
        return self._buffered_records

    def buffered_bytes(self) -> int:
        """Record bytes waiting: batch records carry many events, so bytes bound a flush's size."""
        return self._buffered_bytes

    def _uncount(self, dropped: list[InboundRecord]) -> None:
        self._buffered_records -= len(dropped)
        self._buffered_bytes -= sum(len(r.value or b"") for r in dropped)

    def _recount(self) -> None:
        buffers = [s.buffer for s in self._partitions.values()]
        self._buffered_records = sum(len(b) for b in buffers)
        self._buffered_bytes = sum(len(r.value or b"") for b in buffers for r in b)

    def last_landed(self) -> dict[TopicPartition, int]:
        return {tp: s.done_through for tp, s in self._partitions.items()}

    def status(self) -> dict[TopicPartition, PartitionStatus]:
        now = time.monotonic()
        return {
            tp: PartitionStatus(
                epoch=s.epoch,
                done_through=s.done_through,
                buffered=len(s.buffer),
                seconds_idle=now - s.active_at,
                seconds_unlanded=_seconds_unlanded(s, now),
                rewinding=s.rewind_to is not None,
            )
            for tp, s in self._partitions.items()
        }

    async def release(self, topic_partitions: Iterable[TopicPartition]) -> None:
        """Forget revoked partitions after any flush in progress has landed (no zombie writes).

        A recovery under way for one of them is void from now on (see :meth:`_state`), even
        before the flush lock is ours: its state would hold the partition for this worker
        while its next owner lands the same offsets under other ranges."""
        topic_partitions = list(topic_partitions)
        for tp in topic_partitions:
            self._releases[tp] = self._releases.get(tp, 0) + 1
        async with self.lock:
            for tp in topic_partitions:
                state = self._partitions.pop(tp, None)
                if state is not None:
                    self._uncount(state.buffer)

    # -- recovery ------------------------------------------------------------------------

    async def _state(self, tp: TopicPartition, releases: int) -> _PartitionState | None:
        """The partition's state, recovered once however many callers ask at the same time;
        None if it was released since the caller's reason to ask (a record delivered, an
        assignment read), when it had been released ``releases`` times: the caller reads that
        count before its first await, since a caller may wait here behind another's recovery
        while the rebalance runs."""
        async with self._recovering.setdefault(tp, asyncio.Lock()):
            if self._releases.get(tp, 0) != releases:
                return None
            state = self._partitions.get(tp)
            if state is None:
                state = await self._recover(*tp)
                if self._releases.get(tp, 0) != releases:
                    log.info("partition released while it was recovered; not kept", topic=tp[0], partition=tp[1])
                    return None
                self._partitions[tp] = state
            return state

    async def _recover(self, topic: str, partition: int) -> _PartitionState:
        marker = await asyncio.to_thread(self.engine.recover, topic, partition)
        floor = self.config.log_epoch
        if marker is None or marker.log_epoch < floor:
            # Nothing landed yet, or the operator (or a fresh embedded broker) declared a new log.
            log.info("partition starts fresh", topic=topic, partition=partition, log_epoch=floor)
            return _PartitionState(epoch=floor, done_through=-1, anchor=None, replay=None)
        anchor = Anchor(marker.last_offset, marker.last_fingerprint)
        probe = (await self._probe({(topic, partition): anchor.offset}))[(topic, partition)]
        if not probe.matches(anchor):
            state = _PartitionState(epoch=marker.log_epoch, done_through=marker.last_offset, anchor=anchor, replay=None)
            self._open_new_epoch((topic, partition), state, probe, marker.worker_id)
            return state
        log.info(
            "partition recovered",
            topic=topic,
            partition=partition,
            log_epoch=marker.log_epoch,
            replay_first=marker.first_offset,
            replay_last=marker.last_offset,
        )
        return _PartitionState(
            epoch=marker.log_epoch, done_through=marker.first_offset - 1, anchor=anchor, replay=marker
        )

    # -- the log under the offsets -------------------------------------------------------

    async def _probe(self, anchors: dict[TopicPartition, int]) -> dict[TopicPartition, LogProbe]:
        try:
            return await self.partition_log.probe(anchors)
        except Exception as exc:
            raise LogNotAnswering(f"the broker did not answer a log probe: {type(exc).__name__}: {exc}") from exc

    def _open_new_epoch(
        self, tp: TopicPartition, state: _PartitionState, probe: LogProbe, last_writer: str | None = None
    ) -> None:
        """The log no longer holds what we landed: it was replaced. Land the new one from its start."""
        new_epoch = max(state.epoch + 1, self.config.log_epoch, int(time.time() * 1000))
        anchor = state.anchor or Anchor(-1, 0)
        log.warning(
            "partition log was replaced; landing the new log from its start under a new epoch",
            topic=tp[0],
            partition=tp[1],
            evidence=(
                f"the last landed record (offset {anchor.offset}, fingerprint {anchor.fingerprint}) is "
                + ("not in the log any more" if probe.fingerprint is None else f"now {probe.fingerprint}")
                + f"; the log runs from {probe.log_start} to {probe.high_water}"
            ),
            old_epoch=state.epoch,
            new_epoch=new_epoch,
            dropped_buffered_records=len(state.buffer),
            last_writer=last_writer,
        )
        self._uncount(state.buffer)
        state.epoch = new_epoch
        state.done_through = probe.log_start - 1
        state.read_through = None
        state.anchor = None
        state.replay = None
        state.buffer = []
        state.rewind_to = probe.log_start
        state.rewound_at = 0.0
        state.resumed_at = None
        if self.on_log_reset is not None:
            self.on_log_reset(*tp)

    async def _rewind_again(self, tp: TopicPartition, state: _PartitionState) -> None:
        """Ask again for a rewind that did not take, to a target that is still in the log.

        Retention may have removed the target since it was set: the consumer then resets to
        the log's start, which is never the target, and every record would be answered STALE
        while the rewind was asked again every retry, for ever. The records between the target
        and the log's start are gone from the log before they landed: they are lost, and said
        so, and the partition reads on from what the log still holds.

        A target in the log may hold no record either (a log's start, or a new log's, on a
        transaction marker or a compacted offset): the consumer's first record comes later, and
        would be STALE for ever too. Nothing lies between them, so that record is the target."""
        target = state.rewind_to if state.rewind_to is not None else 0
        try:
            probe = (await self._probe({tp: target}))[tp]
        except LogNotAnswering:
            probe = None  # asked again as before; the next retry probes again
        if state.rewind_to != target:
            # The target came while the probe was out, or the intake asked for another rewind
            # (it admits without the lock): this retry is void. Asked again now, with no target
            # left, it sought to 0, and the partition was read again from the log's start.
            return
        if probe is not None and probe.fingerprint is None:  # no record at the target
            if target < probe.log_start:
                log.error(
                    "records removed by retention before they landed; reading on from the log's start",
                    topic=tp[0],
                    partition=tp[1],
                    rewind_target=target,
                    log_start=probe.log_start,
                    lost_offsets=probe.log_start - target,
                )
                state.rewind_to = probe.log_start
            elif probe.next_record is not None and probe.next_record > target:
                log.info(
                    "rewind target holds no record; reading on from the first record past it",
                    topic=tp[0],
                    partition=tp[1],
                    rewind_target=target,
                    first_record=probe.next_record,
                )
                state.rewind_to = probe.next_record
        await self._rewind(tp, state)

    async def _rewind(self, tp: TopicPartition, state: _PartitionState) -> None:
        state.rewound_at = time.monotonic()
        await self.partition_log.rewind(tp[0], tp[1], state.rewind_to if state.rewind_to is not None else 0)

    async def check_logs(self, assigned: set[TopicPartition] | None = None, lock_wait: float | None = None) -> None:
        """On a timer: catch a replaced log even while nothing is flushed (a consumer reset to
        a shorter log reads nothing new), and rewind again where a rewind did not take.

        ``assigned`` partitions are recovered now if no record has come for them: a consumer
        that resumed from an offset past the end of a new, shorter log (some brokers answer
        an empty fetch there, not "out of range") would otherwise wait at it forever.

        ``lock_wait``: how long to wait for a flush that holds the sink's lock (None: as long
        as it takes). Past it this round checks nothing and returns: the timer's next round
        checks, and a slow flush is not taken for a hung log check (which stops the worker
        once rounds have hung past the stall timeout). The lock is fair, so a round that waits
        takes it before the next flush does.
        """
        # Read now, with ``assigned``: a rebalance during an earlier partition's recovery
        # voids the later ones, which would otherwise keep partitions this worker lost.
        releases = {tp: self._releases.get(tp, 0) for tp in assigned or set()}
        for tp in sorted(releases):
            if tp not in self._partitions:
                await self._state(tp, releases[tp])
        try:
            async with asyncio.timeout(lock_wait):
                await self.lock.acquire()
        except TimeoutError:
            log.info("log check skipped: a flush holds the sink past the wait", waited_s=lock_wait)
            return
        try:
            await self._check_logs_locked()
        finally:
            self.lock.release()

    async def _check_logs_locked(self) -> None:
        anchors = {tp: s.anchor.offset for tp, s in self._partitions.items() if s.anchor is not None}
        probes = await self._probe(anchors) if anchors else {}
        for tp, probe in probes.items():
            state = self._partitions.get(tp)
            if state is not None and state.anchor is not None and not probe.matches(state.anchor):
                self._open_new_epoch(tp, state, probe)
        now = time.monotonic()
        # A copy: a partition's first record recovers it, without the lock, while this awaits.
        for tp, state in list(self._partitions.items()):
            if state.rewind_to is not None and (
                not state.rewound_at or now - state.rewound_at > self.config.rewind_retry_seconds
            ):
                await self._rewind_again(tp, state)
            elif self._stalled(state, probes.get(tp), now):
                await self._resume(tp, state, probes[tp])

    def _stalled(self, state: _PartitionState, probe: LogProbe | None, now: float) -> bool:
        """The log holds records past what landed, yet none has come for a while.

        Seen after a broker restart under load: the consumer took a rewound partition's first
        record and then skipped the rest, its own idea of the read position still that of the
        old log. Nothing else would ever move that partition again.

        A log written by a transactional producer ends on a commit marker, which no consumer
        is given: its end stays past what landed with nothing left to read. Resumed once at
        that end with nothing landing since, the partition is read through, until the end
        moves (before 2026-12-08 it was resumed, with a WARNING and a seek, every retry).
        """
        retry = self.config.rewind_retry_seconds
        return (
            probe is not None
            and state.anchor is not None
            and probe.matches(state.anchor)
            and not state.buffer
            and probe.high_water is not None
            and probe.high_water > state.done_through + 1
            and (probe.high_water, state.done_through) != state.resumed_at
            and now - state.active_at > retry
            and now - state.rewound_at > retry
        )

    async def _resume(self, tp: TopicPartition, state: _PartitionState, probe: LogProbe) -> None:
        log.warning(
            "partition stalled: the log holds records past what landed and none has come; reading on from there",
            topic=tp[0],
            partition=tp[1],
            landed_through=state.done_through,
            high_water=probe.high_water,
        )
        state.rewound_at = time.monotonic()
        state.resumed_at = (probe.high_water, state.done_through)
        await self.partition_log.rewind(tp[0], tp[1], state.done_through + 1)

    # -- flushing ------------------------------------------------------------------------

    async def flush(self) -> list[InboundRecord]:
        """Land every flushable buffer; returns the records that may now be acked.

        After a flush fails, every later one raises :class:`FlushRefused` until the worker
        restarts. The failed flush took its records out of the buffers, and its marker may
        have landed. A later flush of the same partition would land the next range and its
        marker, and the restart would replay only that newest range: the failed one would
        be skipped by offset and lost. Two tasks flush (the timer and the intake's backlog),
        so one may try while the other's failure is stopping the worker.

        A flush whose anchor probe the broker does not answer is put off, not failed: nothing
        of it was written, and its records go back to their buffers, unacked; ``flush_put_off``
        says so until the next flush.
        """
        async with self.lock:
            if self._failed_flush is not None:
                raise FlushRefused("an earlier flush failed; the worker must restart to replay it") from (
                    self._failed_flush
                )
            try:
                return await self._flush_locked()
            except BaseException as exc:
                self._failed_flush = exc
                raise

    async def _flush_locked(self) -> list[InboundRecord]:
        self.flush_put_off = False
        batches = []
        for tp, state in self._partitions.items():
            records = self._take_flushable(state)
            if records:
                state.landing_since = state.buffered_since
                # Still set after the take: these records are the replayed range (or what the
                # log still holds of it).
                replays_from = state.replay.first_offset if state.replay is not None else None
                batches.append((tp, state, records, replays_from))
        self._recount()
        if not batches:
            return []
        # Verify the anchors while the flush is planned: the records were read before this
        # probe, so an anchor still in the log proves they came from the log it belongs to.
        anchors = {tp: state.anchor.offset for tp, state, _, _ in batches if state.anchor is not None}
        probing = asyncio.ensure_future(self._probe(anchors) if anchors else _no_probes())
        try:
            requests = [(tp[0], tp[1], state.epoch, r, rep) for tp, state, r, rep in batches]
            wanted = self.rows_wanted() if self.rows_wanted is not None else None
            plans = await asyncio.to_thread(self.engine.plan, requests, wanted)
        finally:
            await asyncio.wait([probing])
            unanswered = probing.exception()  # retrieved even when the plan failed
        if isinstance(unanswered, LogNotAnswering):
            # Nothing of this flush was written, so it is not a failed flush: stopping the
            # worker for a broker that restarts would gain nothing, and its records wait,
            # unacked, for a flush once the broker answers.
            log.warning("flush put off: the broker did not answer the anchor probe", error=str(unanswered))
            self._put_back(batches)
            self.flush_put_off = True
            return []
        if unanswered is not None:
            raise unanswered
        probes = probing.result()
        kept = []
        for batch, plan in zip(batches, plans, strict=False):
            tp, state = batch[0], batch[1]
            probe = probes.get(tp)
            if probe is not None and state.anchor is not None and not probe.matches(state.anchor):
                self._open_new_epoch(tp, state, probe)  # drops this batch; the new log is read again
                state.landing_since = None
                await self._rewind(tp, state)
                continue
            kept.append((batch, plan))
        if not kept:
            return []
        plans = [plan for _, plan in kept]
        await self._land(plans)
        landed = []
        landed_flushes = [
            LandedFlush(
                p.topic,
                p.partition,
                p.first_offset,
                p.last_offset,
                p.replayed,
                p.rollup_rows,
                p.rollup_customers,
                p.rows_of,
            )
            for p in plans
        ]
        for listener in self.listeners:
            listener(landed_flushes)
        now = time.monotonic()
        for (_, state, records, _), plan in kept:
            state.done_through = plan.last_offset
            state.anchor = Anchor(plan.last_offset, plan.last_fingerprint)
            state.replay = None
            state.active_at = now
            state.buffered_since = now if state.buffer else None
            state.landing_since = None
            landed.extend(records)
            if self.on_flushed:
                self.on_flushed(plan.topic, plan.partition, plan.stats)
        return landed

    def _put_back(self, batches: list[tuple[TopicPartition, _PartitionState, list[InboundRecord], int | None]]) -> None:
        for _, state, records, _ in batches:
            state.buffer = records + state.buffer  # records admitted meanwhile come after them
            state.buffered_since, state.landing_since = state.landing_since, None
        self._recount()

    @staticmethod
    def _take_flushable(state: _PartitionState) -> list[InboundRecord]:
        if not state.buffer:
            return []
        if state.replay is None:
            records, state.buffer = state.buffer, []
            return records
        # A replay lands only as the very range it had before, or its tokens would not match.
        end = state.replay.last_offset
        if state.buffer[0].offset > end:
            # Kafka resumed past the range: it had been acked, so it had fully landed.
            state.replay = None
            state.done_through = max(state.done_through, end)
            records, state.buffer = state.buffer, []
            return records
        if state.buffer[-1].offset < end:
            return []
        records = [r for r in state.buffer if r.offset <= end]
        state.buffer = [r for r in state.buffer if r.offset > end]
        return records

    async def _land(self, plans: list[FlushPlan]) -> None:
        # The order below is the guarantee. A crash after step...
        #  1 (markers): the next owner replays [a, b] exactly; nothing else was written.
        #  2 (dead letters): they are sent again on replay; the DLQ is at-least-once, and its
        #    source.partition/source.offset headers identify repeats.
        #  3/4 (events, rollups): the replay's identical tokens make ClickHouse drop them.
        #  5 (dedupe cache): the next owner re-reads the missing keys from usage_events.
        #  6 (ack, by the caller): Kafka may redeliver; records < a are skipped by offset and
        #    [a, b] is replayed as in 1 (its inserts dropped by token), unless Kafka resumes past b.
        # The anchor check before step 1 (see flush) decides that [a, b] belongs after b's
        # predecessor; a crash anywhere leaves that decision to be made again.
        now = datetime.now(UTC)
        markers = [p.marker(self.config.worker_id, now) for p in plans]
        await asyncio.to_thread(self.engine.insert_markers, markers)
        dead_letters = [d for p in plans for d in p.dead_letters]
        if dead_letters:
            await self.send_dead_letters(dead_letters)
        await asyncio.to_thread(self.engine.write, plans)  # 3, 4 and 5, per plan


def _seconds_unlanded(state: _PartitionState, now: float) -> float:
    """How long the oldest record read and not landed has waited: buffered, or in a flush
    that has not landed (a failed one included, until the worker stops)."""
    since = [t for t in (state.landing_since, state.buffered_since if state.buffer else None) if t is not None]
    return now - min(since) if since else 0.0


def _resumes_past_replay(state: _PartitionState, record: InboundRecord) -> bool:
    """The partition's first record since recovery is the one right after the range it
    replays: Kafka resumed there because the range was acked, so it had landed (see
    :meth:`UsageSink._take_flushable`). Any other jump in the offsets is a gap the log must be
    asked about: inside the range or from inside it past it, a record the consumer skipped
    would be left out of the range, which lands under its own token, and then answered
    ``LANDED`` when it came; further past the range, the skipped records would be answered
    ``STALE``. The ask costs at most reading the range again, which lands once by its token."""
    return state.replay is not None and state.read_through is None and record.offset == state.replay.last_offset + 1


async def _no_probes() -> dict[Any, LogProbe]:
    return {}
