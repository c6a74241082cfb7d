"""Same-run references for ``bench``: what the broker can deliver, and the naive loop by hand.

Run as a subprocess on a topic the bench has published (one process per chdb directory)::

    python -m bastionary.tools.bench.references transport|handwritten|kafkaengine \
        --bootstrap HOST:PORT --topic T --group G --expect-records N [--expect-events M] \
        --report /path/result.json [--data-dir D] [--event-loop uvloop|asyncio]

- ``transport``: aiokafka ``getmany`` that only counts records, the ceiling of the client and
  broker on this machine.
- ``handwritten``: what a user would write in an afternoon. aiokafka ``getmany``, orjson, a
  Python set for dedupe (lost with the process), per-minute count rollups in a dict, and
  column-oriented inserts into ClickHouse (chdb in ``--data-dir``), one per table per fetch
  round of at least 20,000 events or 250 ms, offsets committed after the inserts. It
  validates nothing beyond what it needs to read, and has no dead letters, no replay-safe
  tokens and no per-meter aggregations.
- ``kafkaengine``: ClickHouse's own Kafka table engine in chdb with materialized views, no
  dedupe at all; see :mod:`bastionary.tools.bench.kafka_engine` for how it is timed.

Each runs on the event loop the bench's workers run on (``--event-loop``). Both time from the
first record taken to the last one counted (the hand-written loop: to its last insert) and
write ``{"records", "events", "duplicates", "first", "last"}`` to ``--report`` when
``--expect-records`` have been counted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bastionary.eventloop import EVENT_LOOPS, use_event_loop
from bastionary.worker.bare_agent import write_report

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord

_FLUSH_EVENTS = 20_000
_FLUSH_SECONDS = 0.25


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )


class _Fetched:
    """A consumer's ``getmany`` rounds until ``expect`` records came, with the time of the first."""

    def __init__(self, consumer: AIOKafkaConsumer, expect: int):
        self.consumer, self.expect = consumer, expect
        self.records, self.first = 0, 0.0

    async def rounds(self) -> AsyncIterator[list[list[ConsumerRecord[Any, Any]]]]:
        while self.records < self.expect:
            batches = list((await self.consumer.getmany(timeout_ms=200, max_records=5000)).values())
            for batch in batches:
                if batch and not self.first:
                    self.first = time.time()
                self.records += len(batch)
            yield batches


async def _transport(bootstrap: str, topic: str, group: str, expect: int) -> dict[str, float]:
    consumer = _consumer(bootstrap, topic, group)
    await consumer.start()
    fetched = _Fetched(consumer, expect)
    try:
        async for _ in fetched.rounds():
            pass
    finally:
        await consumer.stop()
    records = fetched.records
    return {"records": records, "events": records, "duplicates": 0, "first": fetched.first, "last": time.time()}


class _HandWritten:
    def __init__(self, data_dir: Path):
        import clickhouse_connect

        self.client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir.resolve()}")
        self.client.command(
            "CREATE TABLE IF NOT EXISTS events (id String, source String, type String, customer_id String,"
            " time DateTime64(6, 'UTC'), data String) ENGINE = MergeTree ORDER BY (customer_id, time)"
        )
        self.client.command(
            "CREATE TABLE IF NOT EXISTS rollup (type String, customer_id String, minute DateTime('UTC'),"
            " events UInt64) ENGINE = SummingMergeTree ORDER BY (type, customer_id, minute)"
        )
        self.seen: set[tuple[str, str]] = set()
        self.columns: list[list[Any]] = [[] for _ in range(6)]
        self.rollup: dict[tuple[str, str, int], int] = {}
        self.events = self.duplicates = 0

    def take(self, value: bytes) -> None:
        decoded = orjson.loads(value)
        for event in decoded if isinstance(decoded, list) else (decoded,):
            key = (event["source"], event["id"])
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            moment = datetime.fromisoformat(event["time"])
            second = int(moment.timestamp())
            ids, sources, types, customers, times, data = self.columns
            ids.append(event["id"])
            sources.append(event["source"])
            types.append(event["type"])
            customers.append(event["subject"])
            times.append(second * 1_000_000 + moment.microsecond)
            data.append(orjson.dumps(event.get("data", {})).decode())
            minute = (event["type"], event["subject"], second - second % 60)
            self.rollup[minute] = self.rollup.get(minute, 0) + 1
            self.events += 1

    def pending(self) -> int:
        return len(self.columns[0])

    def flush(self) -> None:
        if self.columns[0]:
            names = ["id", "source", "type", "customer_id", "time", "data"]
            self.client.insert("events", self.columns, column_names=names, column_oriented=True)
            self.columns = [[] for _ in range(6)]
        if self.rollup:
            keys = list(self.rollup)
            columns: list[list[Any]] = [
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                list(self.rollup.values()),
            ]
            self.client.insert(
                "rollup", columns, column_names=["type", "customer_id", "minute", "events"], column_oriented=True
            )
            self.rollup = {}


async def _handwritten(bootstrap: str, topic: str, group: str, expect: int, data_dir: Path) -> dict[str, float]:
    loop = _HandWritten(data_dir)
    consumer = _consumer(bootstrap, topic, group)
    await consumer.start()
    fetched, flushed_at = _Fetched(consumer, expect), time.monotonic()
    try:
        async for batches in fetched.rounds():
            for batch in batches:
                for message in batch:
                    loop.take(message.value)
            flush_due = loop.pending() >= _FLUSH_EVENTS or time.monotonic() - flushed_at >= _FLUSH_SECONDS
            if flush_due or fetched.records >= expect:
                loop.flush()  # crash here: the set is gone, and a restart counts repeats again
                await consumer.commit()
                flushed_at = time.monotonic()
    finally:
        await consumer.stop()
    return {
        "records": fetched.records,
        "events": loop.events,
        "duplicates": loop.duplicates,
        "first": fetched.first,
        "last": time.time(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["transport", "handwritten", "kafkaengine"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect-records", type=int, required=True)
    parser.add_argument("--expect-events", type=int, default=None, help="kafkaengine: rows to wait for")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="uvloop", help="as the worker's setting")
    args = parser.parse_args(argv)
    use_event_loop(args.event_loop)
    if args.kind == "transport":  # counts records only: it stores nothing
        result = asyncio.run(_transport(args.bootstrap, args.topic, args.group, args.expect_records))
        write_report(args.report, result)
        return
    data_dir = args.data_dir or args.report.parent / args.kind
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.kind == "kafkaengine":
        from bastionary.tools.bench import kafka_engine

        expect_events = args.expect_events or args.expect_records
        result = kafka_engine.run(args.bootstrap, args.topic, args.group, args.expect_records, expect_events, data_dir)
    else:
        import gc

        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 10)  # tuned, as the loop was: its best figure, not its worst
        result = asyncio.run(_handwritten(args.bootstrap, args.topic, args.group, args.expect_records, data_dir))
    write_report(args.report, result)


if __name__ == "__main__":
    main()
