"""``/metrics`` and ``/healthz``: ok only while the broker answers and every owned partition
moves (or has nothing to move)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import faust
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from bastionary import metrics
from bastionary.metering.sink import UsageSink
from bastionary.settings import Settings
from bastionary.worker.services.usage import UsageService


def health_report(
    worker_id: str,
    sink: UsageSink | None,
    broker_answered_at: float | None,
    consumer: Any,
    *,
    started_at: float,
    stall_after: float,
    broker_silence: float,
    rebalancing_since: float | None = None,
    positions: Mapping[tuple[str, int], int] | None = None,
) -> dict[str, Any]:
    """``positions``: where the consumer fetches next in each partition (:func:`fetch_positions`);
    a partition without one is judged by the end of its log alone."""
    now = time.monotonic()
    problems: list[str] = []
    if rebalancing_since is not None and now - rebalancing_since > stall_after:
        problems.append(f"the consumer group has been rebalancing for {now - rebalancing_since:.0f} s")
    last_answer = broker_answered_at if broker_answered_at is not None else started_at
    if now - last_answer > broker_silence:
        problems.append(f"the broker has not answered for {now - last_answer:.0f} s")
    partitions = {}
    for (topic, partition), status in (sink.status() if sink is not None else {}).items():
        high = None
        with contextlib.suppress(Exception):
            high = consumer.highwater(TP(topic, partition)) if consumer is not None else None
        waiting = max(0, high - status.done_through - 1) if high is not None else status.buffered
        # A transaction's commit marker takes an offset in the log, and the end of the log
        # counts it, but no record is ever delivered for it: an idle partition whose last
        # offset is a marker would wait for it forever. The consumer's position moves past
        # markers, so only the offsets it has not reached yet are records still to be read.
        # What it has read and not landed is judged by how long the sink holds it
        # (``seconds_unlanded``). ``waiting`` stays the lag as Kafka and the lag metric count it.
        position = (positions or {}).get((topic, partition))
        unread = waiting
        if high is not None and position is not None:
            unread = max(0, high - max(position, status.done_through + 1))
        partitions[f"{topic}/{partition}"] = {
            "epoch": status.epoch,
            "landed_through": status.done_through,
            "waiting": waiting,
            "buffered": status.buffered,
        }
        name = f"{topic}/{partition}"
        if status.seconds_unlanded > stall_after:
            problems.append(f"{name}: records read {status.seconds_unlanded:.0f} s ago have not landed")
        elif status.rewinding and status.seconds_idle > stall_after:
            problems.append(
                f"{name}: rewound after a log reset, and the new log has not come for {status.seconds_idle:.0f} s"
            )
        elif unread and status.seconds_idle > stall_after:
            problems.append(
                f"{name}: {unread} records wait in the log and none was read for {status.seconds_idle:.0f} s"
            )
    return {
        "status": "unhealthy" if problems else "ok",
        "worker_id": worker_id,
        "problems": problems,
        "partitions": partitions,
    }


def fetch_positions(consumer: Any) -> dict[tuple[str, int], int]:
    """The offset the consumer fetches next in each assigned partition that has a position.

    Read from aiokafka's subscription state (faust-streaming 0.15, aiokafka 0.14 names), as
    Faust's own ``highwater`` reads the end of the log: aiokafka's public ``position`` is a
    coroutine on the consumer thread's two-worker queue, and waits as long as the partition
    has no position (a broker away), which each readiness probe would add to.
    """
    try:
        assignment = consumer._thread._ensure_consumer()._subscription.subscription.assignment
        states = [(tp, assignment.state_value(tp)) for tp in assignment.tps]
    except Exception:  # no consumer yet, nothing assigned, or not Faust's aiokafka consumer
        return {}
    return {(tp.topic, tp.partition): state.position for tp, state in states if state.has_valid_position}


def install(app: faust.App, settings: Settings, worker_id: str, usage: UsageService) -> None:
    @app.page("/metrics")
    async def metrics_view(web: View, request: Request) -> Response:
        usage.update_lag_metrics()
        return web.bytes(generate_latest(metrics.REGISTRY), content_type="text/plain")

    @app.page("/healthz")
    async def health_view(web: View, request: Request) -> Response:
        report = health_report(
            worker_id,
            usage.opened_sink,
            usage.partition_log.last_answer,
            app.consumer,
            started_at=usage.started_at,
            stall_after=settings.stall_timeout.total_seconds(),
            broker_silence=3 * settings.log_check_interval.total_seconds() + usage.partition_log.timeout,
            rebalancing_since=usage.rebalancing_since,
            positions=fetch_positions(app.consumer),
        )
        return web.json(report, status=200 if report["status"] == "ok" else 503)
