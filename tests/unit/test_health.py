"""What /healthz answers, from the sink's partition status and the broker's last answer."""

from __future__ import annotations

import time

from bastionary.metering.sink import PartitionStatus
from bastionary.worker.api.health import health_report


class FakeSink:
    def __init__(self, **statuses: PartitionStatus) -> None:
        self._statuses = {(name, 0): status for name, status in statuses.items()}

    def status(self):
        return self._statuses


class FakeConsumer:
    def __init__(self, high: int) -> None:
        self.high = high

    def highwater(self, tp):
        return self.high


def status(done=9, buffered=0, idle=0.0, unlanded=0.0, rewinding=False) -> PartitionStatus:
    return PartitionStatus(
        epoch=1, done_through=done, buffered=buffered, seconds_idle=idle, seconds_unlanded=unlanded, rewinding=rewinding
    )


def report(sink=None, answered_ago=1.0, high=10):
    now = time.monotonic()
    return health_report(
        "w1", sink, now - answered_ago, FakeConsumer(high), started_at=now - 100, stall_after=60, broker_silence=10
    )


def test_ok_when_the_broker_answers_and_nothing_waits():
    result = report(FakeSink(t=status()))
    assert result["status"] == "ok" and result["problems"] == []
    assert result["partitions"]["t/0"] == {"epoch": 1, "landed_through": 9, "waiting": 0, "buffered": 0}


def test_a_silent_broker_is_unhealthy():
    assert "the broker has not answered for 30 s" in report(answered_ago=30)["problems"]


def test_records_waiting_in_the_log_that_nobody_reads_are_a_stall():
    result = report(FakeSink(t=status(idle=90)), high=50)
    assert result["status"] == "unhealthy" and "40 records wait in the log" in result["problems"][0]


def test_read_records_that_never_land_are_a_stall():
    result = report(FakeSink(t=status(buffered=5, unlanded=70)), high=15)
    assert "have not landed" in result["problems"][0]


def test_an_idle_partition_with_nothing_waiting_is_fine_however_long():
    assert report(FakeSink(t=status(idle=10_000)), high=10)["status"] == "ok"


def test_a_rewind_the_new_log_never_answers_is_a_stall():
    assert "rewound" in report(FakeSink(t=status(idle=90, rewinding=True)), high=10)["problems"][0]


def test_before_the_first_answer_the_start_time_counts():
    now = time.monotonic()
    fresh = health_report("w1", None, None, None, started_at=now, stall_after=60, broker_silence=10)
    assert fresh["status"] == "ok"
    stale = health_report("w1", None, None, None, started_at=now - 60, stall_after=60, broker_silence=10)
    assert stale["status"] == "unhealthy"


def test_a_rebalance_that_does_not_end_within_the_stall_timeout_is_unhealthy():
    now = time.monotonic()

    def rebalancing_for(seconds: float):
        return health_report(
            "w1",
            FakeSink(t=status()),
            now - 1,
            FakeConsumer(10),
            started_at=now - 100,
            stall_after=60,
            broker_silence=10,
            rebalancing_since=now - seconds,
        )

    assert rebalancing_for(5)["status"] == "ok"  # a rebalance takes a few seconds
    stuck = rebalancing_for(90)
    assert stuck["status"] == "unhealthy"
    assert "the consumer group has been rebalancing for 90 s" in stuck["problems"]
