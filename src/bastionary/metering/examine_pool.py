"""Examining records in processes of the worker's own (``BASTIONARY_EXAMINE_PROCESSES``).

Parsing, validating, reading meters and building rows (:func:`~bastionary.metering.examine.examine`)
is pure Python that never releases the GIL: run in the worker's flush thread, it holds the
interpreter that the event loop needs for heartbeats, entitlement checks and HTTP. Here it
runs in a child process; the worker sends record bytes and gets plain results back, and
keeps the GIL for dedupe verdicts, rollups and inserts.

Nothing depends on where a record was examined: the child runs the same pure function over
the same fields, so a replay judges a record the same either way. If a child dies or a
chunk cannot come back, that chunk and the rest of the partition's records are examined in
the worker, and a new pool starts at the next plan: a broken pool costs time, never records.
"""

from __future__ import annotations

import gc
import multiprocessing
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog

from bastionary.gc_generations import ALLOCATIONS, collect_every
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.ingest.errors import Rejection
from bastionary.logs import configure_logging
from bastionary.metering.examine import Accepted, Examined, examine, ingested_at_of
from bastionary.metering.meters import Aggregation, Meter
from bastionary.metering.planning import examine_here
from bastionary.metering.ports import EventRow
from bastionary.metering.readings import Group, MeterIndex, Reading
from bastionary.metering.records import InboundRecord

log = structlog.get_logger(__name__)

# Records go to a child in chunks of about this many bytes: large enough that a chunk's
# round trip is small beside its work (a few hundred single-event records, or about a dozen
# 100-event ones), small enough that the worker settles one chunk while the child examines
# the next.
CHUNK_BYTES = 128 * 1024

_meters: MeterIndex | None = None
_limits: RecordLimits | None = None


class ExaminePool:
    def __init__(
        self,
        meters: Sequence[Meter],
        limits: RecordLimits,
        processes: int = 1,
        log_level: str = "INFO",
        log_format: str = "auto",
    ):
        self._meters = list(meters)
        self._logging = (log_level, log_format)
        self._limits = limits
        self._processes = processes
        self._here = examine_here(MeterIndex(meters), limits)
        self._aggregations = {meter.key: meter.aggregation for meter in meters}
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # Spawned, never forked: the worker runs threads and an event loop.
            self._executor = ProcessPoolExecutor(
                self._processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(self._meters, self._limits, self._logging),
            )
        return self._executor

    def __call__(self, records: list[InboundRecord], epoch: int) -> Iterator[Examined]:
        """Examine ``records`` in the children, yielding results in record order."""
        chunks = _chunks(records, CHUNK_BYTES)
        try:
            pool = self._pool()
            futures: list[Future[list[_Packed]]] = [pool.submit(_examine_chunk, chunk, epoch) for chunk in chunks]
        except Exception:
            log.exception("the examine pool did not take a flush; examining it in the worker")
            self._discard()
            yield from self._here(records, epoch)
            return
        for position, (chunk, future) in enumerate(zip(chunks, futures, strict=True)):
            try:
                results = future.result()
            except Exception:
                log.exception("the examine pool failed; examining the rest of these records in the worker")
                for pending in futures[position:]:
                    pending.cancel()
                self._discard()
                for rest in chunks[position:]:
                    yield from self._here(rest, epoch)
                return
            for record, packed in zip(chunk, results, strict=True):
                yield _unpack(packed, record, epoch, self._aggregations)

    def _discard(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _chunks(records: list[InboundRecord], chunk_bytes: int) -> list[list[InboundRecord]]:
    chunks: list[list[InboundRecord]] = []
    current: list[InboundRecord] = []
    size = 0
    for record in records:
        current.append(record)
        size += len(record.value or b"") + 100
        if size >= chunk_bytes:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


def _start_child(meters: list[Meter], limits: RecordLimits, logging: tuple[str, str]) -> None:
    global _meters, _limits
    # Ctrl-C reaches the whole process group: the worker decides when its children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(*logging)  # the worker's stderr: JSON lines off a terminal, as the worker writes
    _meters, _limits = MeterIndex(meters), limits
    gc.collect()
    gc.freeze()
    # A child holds one chunk's objects at a time and its pauses hold up no request: the
    # collector stays on, started every 50,000 allocations rather than 700.
    collect_every(ALLOCATIONS)


def _examine_chunk(records: list[InboundRecord], epoch: int) -> list[_Packed]:
    if _meters is None or _limits is None:
        raise RuntimeError("the examine pool's initializer has not run")
    return [_pack(examine(record, epoch, _meters, _limits)) for record in records]


# What crosses the process boundary: plain tuples of strings, numbers and bytes. Pickling the
# result objects themselves (slotted dataclasses, named tuples, datetimes, Decimals, enums)
# cost the worker more to load than examining the records itself (20 us per event to load,
# 20 to examine, on the bench's batch records). What the record itself holds (topic,
# partition, offset, broker time) is not sent back: the worker has the record.
_PackedReading = tuple[str, Group, str | None, str | None]  # meter, group, value as text, unique
_PackedMember = tuple[int, bytes, str, str, str, str, int, str, list[_PackedReading]]
_Packed = tuple[Rejection | None, bool, list[_PackedMember], list[tuple[int, Rejection]], tuple[str, str] | None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _pack(examined: Examined) -> _Packed:
    members: list[_PackedMember] = []
    for accepted in examined.accepted:
        row = accepted.row
        readings = [(r.meter, r.group, None if r.value is None else str(r.value), r.unique) for r in accepted.readings]
        members.append((
            accepted.index,
            accepted.payload_hash,
            row.event_id,
            row.source,
            row.type,
            row.customer_id,
            (row.time - _EPOCH) // _MICROSECOND,  # the same instant, in UTC: DateTime64(6) holds no zone
            row.data,
            readings,
        ))  # fmt: skip
    return examined.rejection, examined.batch, members, examined.rejected, examined.failure


def _unpack(packed: _Packed, record: InboundRecord, epoch: int, aggregations: dict[str, Aggregation]) -> Examined:
    rejection, batch, members, rejected, failure = packed
    examined = Examined(rejection, batch, [], rejected, failure)
    if not members:
        return examined
    ingested_at = ingested_at_of(record)
    append = examined.accepted.append
    for index, payload_hash, event_id, source, type_, customer_id, micros, data, readings in members:
        row = EventRow(
            event_id,
            source,
            type_,
            customer_id,
            _EPOCH + timedelta(microseconds=micros),
            data,
            payload_hash.hex(),
            ingested_at,
            record.topic,
            epoch,
            record.partition,
            record.offset,
            index,
        )
        values = [
            # str() of a Decimal reads back to the same digits and exponent.
            Reading(meter, aggregations[meter], group, None if value is None else Decimal(value), unique)
            for meter, group, value, unique in readings
        ]
        append(Accepted(index, payload_hash, row, values))
    return examined
