"""``bench --api``: HTTP ingest throughput in 100-event batches, and the latency of a 30-day
daily usage query, on one worker of the embedded stack.

1. **Ingest.** Events spread over the last 30 days, 100 per request, one customer per
   request, posted by ``CONCURRENCY`` connections. The clock runs from the first request to
   the last ``202`` (each ``202`` means the broker acknowledged its events), and again to
   the moment the worker has landed them all (its committed offsets reach the log end).
   The poster, the broker and the worker share the machine's cores.
2. **Exactness.** ``usage_events`` then holds every event once.
3. **Queries.** ``GET /v1/meters/llm_tokens/query`` for one customer, 30 days, daily
   windows, one request at a time on an idle worker; client-side latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bastionary.devstack.broker import EmbeddedBroker, free_port
from bastionary.tools.bench.entitlements.figures import _percentile
from bastionary.tools.bench.entitlements.run import _WorkerEnv
from bastionary.tools.bench.options import PARTITIONS, BenchError
from bastionary.tools.bench.processes import (
    PartsCpu,
    _say,
    _sigterm_as_interrupt,
    bench_directory,
    cpu_seconds_of,
    machine_busy_seconds,
)
from bastionary.tools.bench.report import machine_info
from bastionary.tools.bench.stack import _Bench, _Worker
from bastionary.topics import Topics

TARGET_INGEST_EVENTS_S = 20_000
TARGET_QUERY_P99_MS = 100.0
BATCH = 100
CONCURRENCY = 8
Figures = dict[str, Any]


@dataclass(frozen=True)
class _Sizes:
    events: int
    customers: int
    queries: int


FULL = _Sizes(events=1_000_000, customers=1_000, queries=300)
QUICK = _Sizes(events=20_000, customers=100, queries=30)


def run_api_bench(
    quick: bool = False, worker_settings: dict[str, str] | None = None, clickhouse_server: bool = False
) -> Figures:
    """``worker_settings`` and ``clickhouse_server`` as the full bench takes them: with a
    server, the worker's flushes may run in flush processes (``flush_process=true``), and the
    worker's own interpreter then judges the posted events and answers HTTP alone."""
    started = time.monotonic()
    sizes = QUICK if quick else FULL
    with bench_directory("bastionary-bench-api-") as root:
        result = _run_in(root, sizes, quick, worker_settings or {}, clickhouse_server)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _run_in(
    root: Path, sizes: _Sizes, quick: bool, worker_settings: dict[str, str], clickhouse_server: bool
) -> Figures:
    port, key = free_port(), secrets.token_urlsafe(24)
    processes = _WorkerEnv({
        "BASTIONARY_API_KEYS": key,
        "BASTIONARY_WEB_PORT": str(port),
        "BASTIONARY_RATING_ENABLED": "false",
        "BASTIONARY_DUNNING_ENABLED": "false",
    })  # fmt: skip
    result: Figures = {
        "options": {
            "quick": quick,
            "events": sizes.events,
            "customers": sizes.customers,
            "events_per_request": BATCH,
            "connections": CONCURRENCY,
            "queries": sizes.queries,
            "partitions": PARTITIONS,
            "worker_settings": dict(worker_settings),
            "clickhouse": "a server over HTTP (serve-clickhouse)" if clickhouse_server else "chdb in the worker",
        },
        "machine": machine_info(),
    }
    try:
        with _sigterm_as_interrupt():
            broker = EmbeddedBroker(root / "broker")
            try:
                broker.start()
                bench = _Bench(root, processes, broker, None, worker_settings, clickhouse_server)
                prefix, group = bench.names("api")
                from bastionary.kafka import ensure_topics

                asyncio.run(ensure_topics(bench.bootstrap, Topics(prefix).all(), PARTITIONS))
                worker = bench.start_worker("api", prefix, group)
                try:
                    result.update(asyncio.run(_measure(bench, worker, sizes, f"http://127.0.0.1:{port}", key)))
                finally:
                    bench.stop_worker(worker)
            finally:
                processes.stop_all()
                broker.stop()
    finally:
        processes.stop_all()
    return result


def _bodies(sizes: _Sizes, tag: str, now: datetime) -> tuple[list[bytes], list[str]]:
    rng = random.Random(11)
    customers = [f"api-{tag}-{i:05d}" for i in range(sizes.customers)]
    span = int(timedelta(days=30).total_seconds()) - 3600
    bodies = []
    for start in range(0, sizes.events, BATCH):
        customer = customers[(start // BATCH) % len(customers)]
        batch = [
            {
                "specversion": "1.0",
                "id": f"{tag}-{n}",
                "source": "bench-api",
                "type": "llm.completion",
                "subject": customer,
                "time": (now - timedelta(seconds=rng.randrange(span))).isoformat(),
                "data": {"model": rng.choice(("gpt-4", "small")), "tokens": rng.randrange(1, 2000)},
            }
            for n in range(start, min(start + BATCH, sizes.events))
        ]
        bodies.append(orjson.dumps(batch))
    return bodies, customers


async def _measure(bench: _Bench, worker: _Worker, sizes: _Sizes, base: str, key: str) -> Figures:
    import aiohttp

    now = datetime.now(UTC).replace(microsecond=0)
    bodies, customers = _bodies(sizes, bench.tag, now)
    headers = {"Authorization": f"Bearer {key}"}
    batch_type = {"Content-Type": "application/cloudevents-batch+json"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        _say("waiting for the worker's API")
        deadline = time.monotonic() + 180
        while True:
            worker.check_alive()
            try:
                async with session.post(f"{base}/v1/events", data=b"[]", headers=batch_type) as probe:
                    if probe.status == 400:  # answered by the handler: the API is up
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the worker's API did not come up in 180 s")
            await asyncio.sleep(0.2)

        _say(f"posting {sizes.events:,} events in {len(bodies):,} requests over {CONCURRENCY} connections")
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        failures: list[str] = []

        async def poster() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(f"{base}/v1/events", data=body, headers=batch_type) as response:
                    await response.read()
                    if response.status != 202:
                        failures.append(f"{response.status}")

        cpu_before = _cpu_seconds(worker, bench)
        posted_at = time.time()
        await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
        acknowledged_at = time.time()
        cpu_used = {name: after - cpu_before[name] for name, after in _cpu_seconds(worker, bench).items()}
        if failures:
            raise BenchError(f"{len(failures)} requests were not accepted: {sorted(set(failures))}")
        ends = await _log_ends(bench.bootstrap, worker.topic)
        landed_at = await asyncio.to_thread(bench.wait_caught_up, worker, ends, 900.0)
        reader = worker.reader()
        stored = reader.query("SELECT count(), uniqExact(event_id) FROM usage_events").result_rows[0]
        acknowledged_rate = round(sizes.events / (acknowledged_at - posted_at))
        ingest: Figures = {
            "acknowledged_events_per_s": acknowledged_rate,
            "landed_events_per_s": round(sizes.events / (landed_at - posted_at)),
            "acknowledged_s": round(acknowledged_at - posted_at, 2),
            "landed_s": round(landed_at - posted_at, 2),
            "exact": tuple(stored) == (sizes.events, sizes.events),
            # Cores used while the requests were answered (1.0 = one core busy all along).
            "cores_used": {
                name: round(seconds / (acknowledged_at - posted_at), 2) for name, seconds in cpu_used.items()
            },
        }
        ingest["met"] = acknowledged_rate >= TARGET_INGEST_EVENTS_S
        _say(f"    {ingest['acknowledged_events_per_s']:,} events/s acknowledged; landed {ingest['landed_s']} s")

        _say(f"{sizes.queries} daily queries over 30 days, one customer each")
        rng = random.Random(5)
        frm = (now - timedelta(days=30)).isoformat().replace("+00:00", "Z")
        to = now.isoformat().replace("+00:00", "Z")
        latencies, rows = [], 0
        for customer in [rng.choice(customers) for _ in range(sizes.queries)]:
            url = f"{base}/v1/meters/llm_tokens/query?customer={customer}&from={frm}&to={to}&window=day"
            sent = time.perf_counter()
            async with session.get(url) as response:
                answer = await response.json()
            latencies.append(time.perf_counter() - sent)
            if response.status != 200:
                raise BenchError(f"query answered {response.status}: {answer}")
            rows += len(answer["data"])
        latencies.sort()
        query: Figures = {
            "p50_ms": round(1000 * _percentile(latencies, 0.50), 2),
            "p99_ms": round(1000 * _percentile(latencies, 0.99), 2),
            "max_ms": round(1000 * latencies[-1], 2),
            "windows_per_answer": round(rows / len(latencies), 1),
        }
        query["met"] = query["p99_ms"] <= TARGET_QUERY_P99_MS
        _say(f"    p50 {query['p50_ms']} ms, p99 {query['p99_ms']} ms")
    return {"ingest": ingest, "query": query}


def _cpu_seconds(worker: _Worker, bench: _Bench) -> dict[str, float]:
    """CPU seconds so far of each part (:class:`PartsCpu`: the worker, its children, its
    ClickHouse server with ``--clickhouse-server``, the broker), this process (the poster) and
    the machine."""
    import os

    parts = PartsCpu(bench.broker.pid)
    parts.worker_pid = worker.process.pid
    if worker.clickhouse_server is not None:
        parts.server_pid = worker.clickhouse_server.pid
    return {**parts(), "poster": cpu_seconds_of(os.getpid()), "machine": machine_busy_seconds()}


async def _log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def render_api(result: Figures, as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2, default=str)
    ingest, query = result["ingest"], result["query"]
    lines = [
        f"HTTP ingest, {BATCH}-event requests, {CONCURRENCY} connections, {result['options']['events']:,} events",
        (
            f"  acknowledged  {ingest['acknowledged_events_per_s']:>10,} events/s   target >= {TARGET_INGEST_EVENTS_S:,}"
            f"   {'met' if ingest['met'] else 'MISSED'}"
        ),
        f"  landed        {ingest['landed_events_per_s']:>10,} events/s   exact: {ingest['exact']}",
        "  cores used while answering: " + ", ".join(f"{name} {cores}" for name, cores in ingest["cores_used"].items()),
        f"30-day daily usage query, one customer ({query['windows_per_answer']} windows per answer)",
        (
            f"  p50 {query['p50_ms']} ms   p99 {query['p99_ms']} ms   max {query['max_ms']} ms"
            f"   target p99 <= {TARGET_QUERY_P99_MS:g} ms   {'met' if query['met'] else 'MISSED'}"
        ),
        f"elapsed {result['elapsed_s']} s",
    ]
    return "\n".join(lines)
