"""The usage intake as Faust's conductor drives it: ``full``, then ``put_nowait_enhanced`` or an
awaited ``put``, one record at a time, into a real sink (fake store and log).

Checked here: records reach the sink in offset order even when one of them needs an awaited
admission; a record read before the current rebalance finished is neither admitted nor acked;
4x the flush size buffered holds the next record until a flush lands; a failed admission
stops the worker and admits nothing more. The real consumer and broker drive it in
``tests/integration`` (every pipeline, crash and rebalance test goes through it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from faust.types.tuples import Message

from bastionary.metering.records import InboundRecord
from bastionary.worker.services.usage_intake import UsageIntake
from tests.unit.test_sink import NOW_MS, event_record, make_sink


@dataclass
class _FlowControl:
    active: bool = True

    def is_active(self) -> bool:
        return self.active


@dataclass
class _App:
    """The parts of a Faust app the intake reads."""

    flow_control: _FlowControl = field(default_factory=_FlowControl)
    consumer_generation_id: int = 1
    consumer: object = None
    crashes: list[BaseException] = field(default_factory=list)

    async def crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)


def message_of(record: InboundRecord, generation: int = 1) -> Message:
    return Message(
        record.topic,
        record.partition,
        record.offset,
        NOW_MS / 1000,
        0,
        [],
        record.key,
        record.value,
        None,
        generation_id=generation,
    )


async def deliver(intake: UsageIntake, message: Message) -> None:
    """What the conductor does with each record."""
    message.refcount += 1
    if intake.full():
        await intake.put(message)
    else:
        intake.put_nowait_enhanced(value=message, on_pressure_high=None, on_pressure_drop=None)


def make_intake(tmp_path, max_events: int = 1000, flushes: list | None = None):
    sink, store, log, _ = make_sink(tmp_path)
    app = _App()
    flush_needed = asyncio.Event()
    landed: list = []

    async def flush_once() -> None:
        if flushes is not None:
            flushes.append(sink.buffered())
        for record in await sink.flush():
            intake.ack(record)
            landed.append(record.offset)

    intake = UsageIntake(app, lambda: sink, max_events, 1 << 30, flush_needed, flush_once)  # type: ignore[arg-type]
    return intake, sink, store, log, app, landed


def test_records_reach_the_sink_in_order_when_the_first_awaits_recovery(tmp_path):
    async def scenario():
        intake, sink, store, log, _, _ = make_intake(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(50)]
        log.hold(records)
        for record in records:  # the first record of the partition awaits its recovery
            await deliver(intake, message_of(record))
        await intake.put(message_of(event_record(50, "e-50")))  # waits for what is held
        assert not intake.full()
        assert sink.buffered() == 51
        assert [r.offset for r in await sink.flush()] == list(range(51))
        assert store.total() == 51

    asyncio.run(scenario())


def test_a_record_read_before_the_rebalance_finished_is_dropped_unacked(tmp_path):
    async def scenario():
        intake, sink, _, log, app, _ = make_intake(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(3)]
        log.hold(records)
        old = message_of(records[0], generation=0)
        await deliver(intake, old)
        app.flow_control.active = False  # Faust suspends delivery while it rebalances
        await deliver(intake, message_of(records[0]))
        assert sink.buffered() == 0 and not old.acked
        app.flow_control.active = True
        for record in records:
            await deliver(intake, message_of(record))
        assert sink.buffered() == 3

    asyncio.run(scenario())


def test_a_backlog_of_four_flushes_lands_before_the_next_record_is_read(tmp_path):
    async def scenario():
        flushes: list[int] = []
        intake, sink, store, log, _, landed = make_intake(tmp_path, max_events=5, flushes=flushes)
        records = [event_record(i, f"e-{i}") for i in range(45)]
        log.hold(records)
        for record in records:
            await deliver(intake, message_of(record))
            assert sink.buffered() <= 20
        assert flushes and all(size == 20 for size in flushes)
        assert landed == list(range(20 * len(flushes)))
        assert store.total() == len(landed)

    asyncio.run(scenario())


def test_records_landed_before_are_acked_at_once(tmp_path):
    async def scenario():
        intake, sink, _, log, _, _ = make_intake(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(4)]
        log.hold(records)
        for record in records:
            await deliver(intake, message_of(record))
        await sink.flush()
        again = message_of(records[1])
        await deliver(intake, again)  # a second delivery after a restart of the consumer
        assert again.acked

    asyncio.run(scenario())


def test_a_failed_admission_stops_the_worker_and_admits_nothing_more(tmp_path):
    async def scenario():
        intake, sink, store, log, app, _ = make_intake(tmp_path)
        records = [event_record(i, f"e-{i}") for i in range(3)]
        log.hold(records)

        def broken(*_args):
            raise OSError("ClickHouse unreachable")

        store.latest_marker = broken  # recovery reads the partition's marker first
        await deliver(intake, message_of(records[0]))
        await intake.put(message_of(records[1]))
        await asyncio.sleep(0)
        assert len(app.crashes) == 1
        store.latest_marker = lambda *_args: None
        await deliver(intake, message_of(records[2]))
        assert sink.buffered() == 0

    asyncio.run(scenario())


def test_a_delivery_the_consumer_abandons_still_lands_its_backlog_whole(tmp_path):
    """A rebalance makes the consumer cancel the delivery under way; the flush it waits for
    must finish, and the next delivery waits for it rather than starting another."""

    async def scenario():
        flushes: list[int] = []
        intake, sink, store, log, _, landed = make_intake(tmp_path, max_events=2, flushes=flushes)
        records = [event_record(i, f"e-{i}") for i in range(10)]
        log.hold(records)
        for record in records[:8]:
            await deliver(intake, message_of(record))
        assert intake.full()  # 8 buffered: 4x the flush size
        delivery = asyncio.ensure_future(deliver(intake, message_of(records[8])))
        await asyncio.sleep(0)
        delivery.cancel()
        await deliver(intake, message_of(records[9]))
        assert flushes == [8]
        assert landed == list(range(8))
        assert store.total() == 8
        assert sink.buffered() == 2  # 8 and 9, in order

    asyncio.run(scenario())
