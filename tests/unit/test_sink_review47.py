"""Review 47 of the usage sink's partition watch (README "Log resets are detected, not
trusted"): a log that ends on transaction markers is not taken for stalled at every retry, a
truly stalled partition is still read on, and the log check neither seeks a partition back to
offset 0 nor fails its round when the intake moves on while it awaits the broker."""

from __future__ import annotations

import asyncio
import dataclasses

from structlog.testing import capture_logs

from bastionary.metering.records import Admission
from tests.unit.sink_fakes import FakeLog
from tests.unit.test_sink import TOPIC, admit_all, event_record, make_sink


class _MarkedLog(FakeLog):
    """A log whose end (high water) lies past its last record by ``ends``: commit or abort
    markers, offsets that hold no record a consumer is given."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: dict[tuple[str, int], int] = {}

    async def probe(self, anchors):
        probes = await super().probe(anchors)
        return {
            tp: dataclasses.replace(p, high_water=max(p.high_water or 0, self.ends.get(tp, 0)))
            for tp, p in probes.items()
        }


def _stalled_warnings(logs: list[dict]) -> int:
    return sum(entry["event"].startswith("partition stalled") for entry in logs)


def test_a_log_that_ends_on_a_commit_marker_is_resumed_once_not_at_every_retry(tmp_path):
    """A transactional producer's commit marker ends the log (0-4 records, 5 the marker):
    the high water stays one past what can land. The partition was taken for stalled at every
    retry: a WARNING and a seek to 5, for ever."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path, log=_MarkedLog(), rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(8)]
        log.hold(records[:5])
        log.ends[(TOPIC, 0)] = 6
        await admit_all(sink, records[:5])
        await sink.flush()
        with capture_logs() as logs:
            for _ in range(4):
                await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 5)]  # once: it might have been a stall
        assert _stalled_warnings(logs) == 1
        # The next transaction: records at 6 and 7, its marker at 8. The end moved.
        log.hold(records[6:])
        log.ends[(TOPIC, 0)] = 9
        assert await admit_all(sink, records[6:]) == [Admission.BUFFERED] * 2
        await sink.flush()
        with capture_logs() as logs:
            for _ in range(4):
                await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 5), (TOPIC, 0, 8)]
        assert _stalled_warnings(logs) == 1
        assert store.total() == 7

    asyncio.run(scenario())


def test_a_stalled_partition_whose_consumer_takes_one_record_and_stops_is_resumed_again(tmp_path):
    """What the watch is for, still done: the consumer takes the first record a seek gives
    and skips the rest. Each resume that lands something leaves the partition watched, and
    it reads on until the log's records have landed."""

    async def scenario():
        sink, store, log, _ = make_sink(tmp_path, log=_MarkedLog(), rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(4)]
        log.hold(records)
        await admit_all(sink, records[:1])
        await sink.flush()
        for record in records[1:]:
            await sink.check_logs({(TOPIC, 0)})
            assert log.rewinds[-1] == (TOPIC, 0, record.offset)
            assert await sink.admit(record) is Admission.BUFFERED
            await sink.flush()
        await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 1), (TOPIC, 0, 2), (TOPIC, 0, 3)]
        assert store.total() == 4

    asyncio.run(scenario())


class _HookedLog(FakeLog):
    """Runs ``hook`` (the intake moving on) while the broker is asked about ``hook_at``."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None
        self.hook_at: int | None = None

    async def probe(self, anchors):
        if self.hook is not None and self.hook_at in anchors.values():
            hook, self.hook = self.hook, None
            await hook()
        return await super().probe(anchors)

    async def rewind(self, topic, partition, offset):
        await super().rewind(topic, partition, offset)
        if self.hook is not None and self.hook_at is None:
            hook, self.hook = self.hook, None
            await hook()


def test_a_rewind_whose_target_comes_while_its_retry_probes_is_not_sent_to_offset_0(tmp_path):
    """The consumer skipped 10-29 and the partition rewound to 10. The rewind is retried,
    and 10 comes while the retry's probe is out: the retry then sought to offset 0, and the
    whole partition was read again from the log's start."""

    async def scenario():
        log = _HookedLog()
        sink, store, log, _ = make_sink(tmp_path, log=log, rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(50)]
        log.hold(records)
        await admit_all(sink, records[:10])
        await sink.flush()
        assert await sink.admit(records[30]) is Admission.STALE
        assert log.rewinds == [(TOPIC, 0, 10)]

        async def target_comes():
            assert await sink.admit(records[10]) is Admission.BUFFERED

        log.hook, log.hook_at = target_comes, 10
        await sink.check_logs({(TOPIC, 0)})
        assert log.rewinds == [(TOPIC, 0, 10)]
        assert await admit_all(sink, records[11:]) == [Admission.BUFFERED] * 39
        await sink.flush()
        assert store.total() == 50

    asyncio.run(scenario())


def test_a_partition_recovered_while_the_log_check_awaits_does_not_fail_the_round(tmp_path):
    """A partition's first record recovers it without the sink's lock. Admitted while the
    check awaited a rewind of another partition, it ended the round with "dictionary changed
    size during iteration" (an ERROR, and the round's later partitions left unchecked)."""

    async def scenario():
        log = _HookedLog()
        sink, _, log, _ = make_sink(tmp_path, log=log, rewind_retry=0.0)
        records = [event_record(i, f"e-{i}") for i in range(31)]
        other = event_record(0, "p1-0", partition=1)
        log.hold([*records, other])
        await admit_all(sink, records[:10])
        await sink.flush()
        await sink.admit(records[30])  # partition 0 rewinds to 10

        async def partition_1_comes():
            assert await sink.admit(other) is Admission.BUFFERED

        log.hook = partition_1_comes
        await sink.check_logs()
        assert log.rewinds == [(TOPIC, 0, 10), (TOPIC, 0, 10)]
        assert sink.buffered() == 1

    asyncio.run(scenario())


def test_a_record_asked_about_while_the_log_is_found_replaced_waits_for_the_new_log_s_start(tmp_path):
    """The broker lost its data; its new log holds 0-9, then 20-25 (10-19 an aborted
    transaction). The consumer, still at the old log's 10, is given 20, and the sink asks the
    log about 10; meanwhile the log check finds the log replaced and rewinds to 0. Buffered
    into the new epoch, 20 made the new log's 0-9 STALE when the rewind brought them: lost."""

    async def scenario():
        log = _HookedLog()
        sink, store, log, _ = make_sink(tmp_path, log=log)
        old = [event_record(i, f"old-{i}") for i in range(10)]
        log.hold(old)
        await admit_all(sink, old)
        await sink.flush()
        new = [event_record(i, f"new-{i}", tokens=100) for i in [*range(10), *range(20, 26)]]
        log.replace(TOPIC, 0, new)

        async def log_check():
            await sink.check_logs({(TOPIC, 0)})

        log.hook, log.hook_at = log_check, 10  # while the sink asks about 10
        assert await sink.admit(new[10]) is Admission.STALE
        assert log.rewinds == [(TOPIC, 0, 0)]
        assert await admit_all(sink, new) == [Admission.BUFFERED] * len(new)
        await sink.flush()
        assert store.total() == 10 + 100 * len(new)

    asyncio.run(scenario())
