"""Review 46 of the usage intake and the flush processes: no broker blip stops the worker,
and no failed start of a flush process leaves its pipe or its child behind."""

from __future__ import annotations

import asyncio
import functools
import os

import pytest

from bastionary.metering.flush_process import FlushProcess, FlushProcessDied, FlushProcessFailed, FlushProcessSpec
from bastionary.worker.services.usage_intake import UsageIntake
from tests.unit.flush_process_engines import open_nothing
from tests.unit.test_sink import event_record, make_sink
from tests.unit.test_usage_intake import _App, deliver, message_of


def test_a_recovery_whose_anchor_probe_goes_unanswered_waits_for_the_broker_not_the_restart(tmp_path):
    """A worker handed a partition with a marker probes the anchor before it admits a record;
    a broker that restarts meanwhile must not stop the worker (as a flush is put off), and
    the records land once it answers, none lost or doubled."""

    async def scenario():
        first, store, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(6)]
        log.hold(records)
        for record in records[:3]:
            await first.admit(record)
        await first.flush()  # 0..2 landed: the partition has a marker and an anchor

        sink, _, _, _ = make_sink(tmp_path, store=store, log=log)  # the restarted worker
        app = _App()
        # The default pause between tries (1 s): the test waits for one.
        intake = UsageIntake(app, lambda: sink, 1000, 1 << 30, asyncio.Event(), sink.flush)  # type: ignore[arg-type]
        answering = log.probe
        down = True

        async def probe(anchors):
            if down:
                raise ConnectionError("the broker is restarting")
            return await answering(anchors)

        log.probe = probe  # type: ignore[method-assign]
        held = [message_of(record) for record in records]
        delivery = asyncio.ensure_future(deliver(intake, held[0]))
        await asyncio.sleep(0.05)
        assert not app.crashes
        assert intake.full()  # the record waits, in order, and the next ones behind it
        down = False
        await asyncio.wait_for(delivery, 5)
        for message in held[1:]:
            await asyncio.wait_for(deliver(intake, message), 5)
        assert not app.crashes
        assert [r.offset for r in await sink.flush()] == [0, 1, 2]  # the replayed range
        assert [r.offset for r in await sink.flush()] == [3, 4, 5]
        assert store.total() == 6

    asyncio.run(scenario())


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _my_zombies() -> list[int]:
    zombies = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(pid))
    return zombies


@pytest.mark.parametrize(
    ("open_engine", "failure"),
    [
        (open_nothing, FlushProcessFailed),  # the child could not open its storage
        (functools.partial(os._exit, 3), FlushProcessDied),  # the child died before it was ready
    ],
)
def test_a_flush_process_that_fails_to_start_leaves_no_pipe_and_no_child(open_engine, failure):
    fds, zombies = _open_fds(), set(_my_zombies())
    failures = []  # held, as the worker holds the failure it stops with
    for _ in range(2):
        with pytest.raises(failure) as raised:
            FlushProcess(FlushProcessSpec(open_engine, "CRITICAL"))
        failures.append(raised.value)
    assert _open_fds() <= fds
    assert set(_my_zombies()) <= zombies
