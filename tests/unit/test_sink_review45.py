"""The usage sink's flushes against its contract (README "Exactly once: how", "Failure modes").

What is checked here: records in a flush that has not landed count as unlanded in what
/healthz reads; a broker that does not answer a flush's anchor probe puts the flush off
(nothing of it was written) instead of stopping the worker; and a flush process whose step
hangs does not keep its worker from stopping.
"""

from __future__ import annotations

import asyncio
import threading
import time

from bastionary.metering.flush_process import FlushProcess, FlushProcessDied, FlushProcessSpec
from tests.unit.sink_fakes import FakeLog
from tests.unit.test_sink import TOPIC, admit_all, event_record, make_sink


def test_records_of_a_flush_that_hangs_count_as_unlanded(tmp_path):
    """Taken out of the buffer, a hanging flush's records counted as neither buffered nor
    unlanded: /healthz said ok for as long as ClickHouse (or a flush process) hung."""

    async def scenario():
        sink, _, log, _ = make_sink(tmp_path)
        records = [event_record(o, f"e{o}") for o in range(3)]
        log.hold(records)
        await admit_all(sink, records)
        landing = threading.Event()
        write = sink.engine.write

        def hanging_write(plans):
            landing.wait(10)
            write(plans)

        sink.engine.write = hanging_write
        flushing = asyncio.ensure_future(sink.flush())
        await asyncio.sleep(0.3)
        during = sink.status()[(TOPIC, 0)]
        landing.set()
        landed = await flushing
        return during, sink.status()[(TOPIC, 0)], landed

    during, after, landed = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert during.seconds_unlanded >= 0.25
    assert after.seconds_unlanded == 0.0
    assert [r.offset for r in landed] == [0, 1, 2]


class _SilentProbes(FakeLog):
    """A broker that does not answer probes while ``silent`` (it restarts with its data)."""

    silent = False

    async def probe(self, anchors):
        if self.silent:
            raise ConnectionError("no answer")
        return await super().probe(anchors)


def test_a_flush_whose_anchor_probe_is_not_answered_is_put_off_and_lands_once_later(tmp_path):
    """The probe failed before anything of the flush was written, yet the flush counted as
    failed: every later flush was refused and the worker stopped, for a broker restart that
    README's "Failure modes" says costs nothing."""

    async def scenario():
        log = _SilentProbes()
        sink, store, _, _ = make_sink(tmp_path, log=log)
        records = [event_record(o, f"e{o}", tokens=o + 1) for o in range(6)]
        log.hold(records)
        await admit_all(sink, records[:2])
        first = await sink.flush()
        await admit_all(sink, records[2:4])
        log.silent = True
        put_off = await sink.flush()
        unlanded = sink.status()[(TOPIC, 0)]
        await admit_all(sink, records[4:])
        log.silent = False
        later = await sink.flush()
        return first, put_off, unlanded, later, store

    first, put_off, unlanded, later, store = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [r.offset for r in first] == [0, 1]
    assert put_off == []
    assert unlanded.buffered == 2
    assert [r.offset for r in later] == [2, 3, 4, 5]
    assert [(m[3], m[4]) for m in store.markers] == [(0, 1), (2, 5)]
    assert store.total() == sum(range(1, 7))


class _HangingPurgeEngine:
    """A flush process's engine whose purge hangs (a store that stopped answering)."""

    def recover(self, topic, partition):
        return None

    def purge_expired(self) -> int:
        time.sleep(20)
        return 0

    def close(self) -> None:
        pass


def open_hanging_purge_engine() -> _HangingPurgeEngine:
    return _HangingPurgeEngine()


def test_a_flush_process_whose_step_hangs_is_closed_within_the_timeout():
    """close() took the step lock before anything else, so it waited for the hung step (for
    ever, and the stopping worker with it) and never reached its kill."""
    process = FlushProcess(FlushProcessSpec(open_hanging_purge_engine, "WARNING"))  # type: ignore[arg-type]
    ended: list[BaseException] = []

    def purge() -> None:
        try:
            process.purge_expired()
        except BaseException as exc:
            ended.append(exc)

    step = threading.Thread(target=purge, daemon=True)
    step.start()
    time.sleep(0.5)  # the step is in the child
    started = time.monotonic()
    process.close(timeout=1.0)
    closed_in = time.monotonic() - started
    step.join(5)
    assert closed_in < 10
    assert process._process.returncode is not None
    assert [type(exc) for exc in ended] == [FlushProcessDied]
