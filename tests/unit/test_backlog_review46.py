"""Review 46 of the intake's backlog: a flush the broker puts off (its anchor probe unanswered)
holds the reader until it lands, where reading on grew the buffers without bound and planned
the whole backlog again at every record; a replay still waiting for the rest of its range
never holds it (those records would never be read), and a rebalance still frees it."""

from __future__ import annotations

import asyncio

from bastionary.worker.services.usage_intake import UsageIntake
from tests.unit.test_sink import event_record, make_sink
from tests.unit.test_usage_intake import _App, deliver, make_intake, message_of


def _broker_that_can_go_silent(log):
    """The fake log's probe, made to fail while ``state["down"]`` is set."""
    answering = log.probe
    state = {"down": False}

    async def probe(anchors):
        if state["down"]:
            raise ConnectionError("the broker is restarting")
        return await answering(anchors)

    log.probe = probe
    return state


def test_a_backlog_whose_flush_is_put_off_holds_the_reader_until_it_lands(tmp_path):
    async def scenario():
        intake, sink, store, log, app, landed = make_intake(tmp_path, max_events=5)
        intake._recovery_retry_seconds = 0.01
        records = [event_record(i, f"e-{i}") for i in range(30)]
        log.hold(records)
        for record in records[:3]:
            await deliver(intake, message_of(record))
        await sink.flush()  # 0..2 landed: the partition has an anchor to probe
        broker = _broker_that_can_go_silent(log)
        broker["down"] = True
        planned: list[int] = []
        plan = sink.engine.plan

        def counting_plan(requests, wanted=None):
            planned.append(sum(len(request[3]) for request in requests))
            return plan(requests, wanted)

        sink.engine.plan = counting_plan  # type: ignore[method-assign]
        read = 0
        delivery = None
        for record in records[3:]:
            delivery = asyncio.ensure_future(deliver(intake, message_of(record)))
            done, _ = await asyncio.wait([delivery], timeout=0.2)
            if not done:
                break
            read += 1
        assert read < 27, "the intake read every record while the backlog's flush was put off"
        assert sink.buffered() <= 20  # 4x the flush size
        assert not app.crashes
        tries = len(planned)
        await asyncio.sleep(0.1)
        assert len(planned) > tries  # the flush is tried again while the reader waits
        assert max(planned) <= 20  # each try plans the backlog, never more

        broker["down"] = False
        assert delivery is not None
        await asyncio.wait_for(delivery, 5)
        for record in records[3 + read + 1 :]:
            await asyncio.wait_for(deliver(intake, message_of(record)), 5)
        landed.extend(r.offset for r in await sink.flush())
        assert not app.crashes
        assert sorted(landed) == list(range(3, 30))  # each once, none lost
        assert store.total() == 30

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_replay_waiting_for_the_rest_of_its_range_never_holds_the_reader(tmp_path):
    """Nothing of it is flushable until its last record comes: were the reader held for that
    backlog, the record it waits for would never be read."""

    async def scenario():
        first, store, log, _ = make_sink(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(40)]
        log.hold(records)
        for record in records[:30]:
            await first.admit(record)
        await first.flush()  # marker [0, 29]: the restarted worker replays it whole

        sink, _, _, _ = make_sink(tmp_path, store=store, log=log)
        app = _App()
        intake = UsageIntake(app, lambda: sink, 5, 1 << 30, asyncio.Event(), sink.flush, 0.01)  # type: ignore[arg-type]
        for record in records[:20]:  # 4x the flush size, all inside the replayed range
            await asyncio.wait_for(deliver(intake, message_of(record)), 5)
        broker = _broker_that_can_go_silent(log)
        broker["down"] = True  # a flush of the replay would be put off, but there is none yet
        for record in records[20:29]:
            await asyncio.wait_for(deliver(intake, message_of(record)), 5)
        broker["down"] = False
        for record in records[29:]:
            await asyncio.wait_for(deliver(intake, message_of(record)), 5)
        assert [r.offset for r in await sink.flush()] == list(range(30, 40))  # after the replay
        assert not app.crashes
        assert store.total() == 40

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_rebalance_frees_a_reader_held_by_a_put_off_backlog(tmp_path):
    """The revoked partitions' buffers are released; what is left is no backlog, and the
    records read before the rebalance are dropped unacked for the new owner to read."""

    async def scenario():
        intake, sink, _, log, app, _ = make_intake(tmp_path, max_events=5)
        intake._recovery_retry_seconds = 0.01
        records = [event_record(i, f"e-{i}") for i in range(25)]
        log.hold(records)
        for record in records[:3]:
            await deliver(intake, message_of(record))
        await sink.flush()
        broker = _broker_that_can_go_silent(log)
        broker["down"] = True
        for record in records[3:23]:
            await asyncio.wait_for(deliver(intake, message_of(record)), 5)
        held = message_of(records[23])
        delivery = asyncio.ensure_future(deliver(intake, held))
        await asyncio.sleep(0.05)
        assert not delivery.done()  # the backlog holds the reader while the broker is silent

        app.consumer_generation_id = 2  # the partition was revoked in a rebalance
        await sink.release([(records[0].topic, 0)])
        await asyncio.wait_for(delivery, 5)
        assert not held.acked and sink.buffered() == 0
        assert not intake.full()
        assert not app.crashes

    asyncio.run(asyncio.wait_for(scenario(), 30))
