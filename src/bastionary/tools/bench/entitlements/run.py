"""The entitlement benchmark end to end: the stack, the worker, and the phases in order."""

from __future__ import annotations

import asyncio
import random
import secrets
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bastionary.devstack.broker import EmbeddedBroker, free_port
from bastionary.settings import Settings, format_iso_duration
from bastionary.tools.bench.entitlements.backlog import sampled_backlog
from bastionary.tools.bench.entitlements.constants import (
    BACKGROUND_EVENTS_PER_RECORD,
    CHECK_RATE,
    DEFAULT_INGEST_RATE,
    FEATURE,
    MAX_CONNECTIONS,
    POLL_S,
    STEADY_LIMIT,
    TARGET_CHECK_UNDER_LOAD_P99_MS,
    TRIAL_LIMIT,
)
from bastionary.tools.bench.entitlements.cpu import _CpuClock
from bastionary.tools.bench.entitlements.figures import Figures, _verdicts
from bastionary.tools.bench.entitlements.freshness import (
    _Background,
    _freshness,
    _worker_backlog,
)
from bastionary.tools.bench.entitlements.latency import _open_loop, _serial, _urls
from bastionary.tools.bench.entitlements.preparation import (
    CheckAnswer,
    _settle,
    _subscription,
    _wait_ready,
    _warm_up,
)
from bastionary.tools.bench.entitlements.worker_metrics import _flush_delta, _loop_lag_delta, _worker_readings
from bastionary.tools.bench.options import PARTITIONS, BenchError
from bastionary.tools.bench.processes import _Processes, _say, _sigterm_as_interrupt, bench_directory
from bastionary.tools.bench.report import machine_info
from bastionary.tools.bench.stack import _Bench, _Worker
from bastionary.topics import Topics


@dataclass(frozen=True)
class _Sizes:
    customers: int
    latency_seconds: float
    trials: int


FULL = _Sizes(customers=1_000, latency_seconds=10.0, trials=30)
QUICK = _Sizes(customers=50, latency_seconds=2.0, trials=5)

CATALOG = f"""\
meters:
  - {{key: api_requests, event_type: api.request, aggregation: COUNT}}
plans:
  - key: steady
    currency: USD
    billing_interval: P1M
    prices:
      - {{key: base, model: flat, amount: "10.00"}}
    entitlements:
      - {{feature: {FEATURE}, type: metered, meter: api_requests, limit: {STEADY_LIMIT}, soft: false}}
  - key: trial
    currency: USD
    billing_interval: P1M
    prices:
      - {{key: base, model: flat, amount: "10.00"}}
    entitlements:
      - {{feature: {FEATURE}, type: metered, meter: api_requests, limit: {TRIAL_LIMIT}, soft: false}}
"""


class _WorkerEnv(_Processes):
    """``_Processes`` whose children also get the entitlement settings (catalog, key, port)."""

    def __init__(self, extra: dict[str, str]) -> None:
        super().__init__()
        self.extra = extra

    def spawn(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        return super().spawn(command, env | self.extra, log_path)


def run_entitlements_bench(
    quick: bool = False,
    data_dir: Path | None = None,
    ingest_rate: int = DEFAULT_INGEST_RATE,
    profile_dir: Path | None = None,
    worker_settings: dict[str, str] | None = None,
    clickhouse_server: bool = False,
) -> Figures:
    """Measure check latency and freshness on a fresh embedded stack; see :func:`render_entitlements`."""
    started = time.monotonic()
    sizes = QUICK if quick else FULL
    with bench_directory("bastionary-bench-ent-", data_dir) as root:
        result = _run_in(root, sizes, ingest_rate, profile_dir, worker_settings, quick, clickhouse_server)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _run_in(
    root: Path,
    sizes: _Sizes,
    ingest_rate: int,
    profile_dir: Path | None,
    worker_settings: dict[str, str] | None,
    quick: bool,
    clickhouse_server: bool = False,
) -> Figures:
    defaults = Settings.model_fields
    flush_interval = defaults["flush_interval"].default
    port, key = free_port(), secrets.token_urlsafe(24)
    catalog = root / "catalog.yaml"
    catalog.write_text(CATALOG)
    processes = _WorkerEnv({
        "BASTIONARY_CATALOG": str(catalog),
        "BASTIONARY_API_KEYS": key,
        "BASTIONARY_WEB_PORT": str(port),
        "BASTIONARY_RATING_ENABLED": "false",
    })  # fmt: skip
    result: Figures = {
        "options": {
            "quick": quick,
            "customers": sizes.customers,
            "trial_customers": sizes.trials,
            "check_rate_per_s": CHECK_RATE,
            "latency_seconds": sizes.latency_seconds,
            "background_events_per_s": ingest_rate,
            "background_events_per_record": BACKGROUND_EVENTS_PER_RECORD,
            "trial_limit": TRIAL_LIMIT,
            "flush_interval": format_iso_duration(flush_interval),
            "kafka_fetch_max_wait": format_iso_duration(defaults["kafka_fetch_max_wait"].default),
            "partitions": PARTITIONS,
            "poll_interval_ms": POLL_S * 1000,
            "latency_timing": "open loop at fixed scheduled times: answer read - scheduled send",
            "freshness_timing": "has_access:false answer received - just before the exhausting event was produced",
            "worker_settings": dict(worker_settings or {}),
            "clickhouse": "a server over HTTP (serve-clickhouse)" if clickhouse_server else "chdb in the worker",
        },
        "machine": machine_info(),
    }
    try:
        with _sigterm_as_interrupt():
            broker = EmbeddedBroker(root / "broker")
            try:
                broker.start()
                bench = _Bench(root, processes, broker, profile_dir, worker_settings, clickhouse_server)
                result["event_loop"] = bench.event_loop
                result.update(_run(bench, sizes, port, key, flush_interval.total_seconds(), ingest_rate))
            finally:
                processes.stop_all()
                broker.stop()
    finally:
        processes.stop_all()
    return result


def _run(bench: _Bench, sizes: _Sizes, port: int, key: str, flush_s: float, ingest_rate: int) -> Figures:
    from bastionary.kafka import ensure_topics

    prefix, group = bench.names("entitlements")
    topics = Topics(prefix)
    asyncio.run(ensure_topics(bench.bootstrap, topics.all(), PARTITIONS))
    _say(f"starting a worker (checks on port {port})")
    worker = bench.start_worker("entitlements", prefix, group)
    try:
        return asyncio.run(_measure(bench, worker, topics, sizes, port, key, flush_s, ingest_rate))
    finally:
        bench.stop_worker(worker)


async def _measure(
    bench: _Bench,
    worker: _Worker,
    topics: Topics,
    sizes: _Sizes,
    port: int,
    key: str,
    flush_s: float,
    ingest_rate: int,
) -> Figures:
    import aiohttp

    from bastionary.kafka import UsageProducer

    out: Figures = {}
    rng = random.Random(7)
    steady = [f"ent-{bench.tag}-s{i:05d}" for i in range(sizes.customers)]
    trials = [f"ent-{bench.tag}-t{i:04d}" for i in range(sizes.trials)]
    base = f"http://127.0.0.1:{port}/v1/customers"
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=60)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def check(customer: str) -> CheckAnswer:
            async with session.get(f"{base}/{customer}/entitlements/{FEATURE}") as response:
                body = await response.read()
                return response.status, (orjson.loads(body) if body else None)

        async with UsageProducer(bench.bootstrap, linger_ms=0) as producer:
            # -- set-up: subscriptions, then one check per customer loads its state --------
            start = datetime.now(UTC) - timedelta(days=1)
            plans = [(c, "steady") for c in steady] + [(c, "trial") for c in trials]
            _say(f"subscribing {len(steady):,} steady and {len(trials)} trial customers")
            futures = [await producer.send(topics.subscriptions, _subscription(c, plan, start)) for c, plan in plans]
            await asyncio.gather(*futures)
            spawned = worker.started_at
            await _wait_ready(worker, check, steady[0], 180.0)
            out["warmup"] = {"worker_ready_s": round(time.time() - spawned, 1)}
            warm_started = time.monotonic()
            await _warm_up(worker, check, steady + trials, 300.0)
            out["warmup"] |= {"customers": len(plans), "seconds": round(time.monotonic() - warm_started, 1)}
            _say(f"    {len(plans):,} customers warm in {out['warmup']['seconds']} s")

            # -- (a) check latency on an otherwise idle worker ------------------------------
            clock = _CpuClock(worker)
            urls = _urls(base, steady)
            # The worker re-reads customers whose subscription changed in the last few seconds
            # (see _settle): measure once that is over.
            settled, idle_cores = await _settle(worker, clock, 60.0)
            out["warmup"] |= {"settle_s": settled}
            out["worker_idle_cpu_cores"] = idle_cores
            _say(f"    worker settled after {settled} s (idle CPU {idle_cores} cores)")
            serial = await _serial(session, urls, min(3.0, sizes.latency_seconds), rng)
            out["latency_serial"] = serial
            _say(f"    one at a time: p50 {serial['p50_ms']} ms, p99 {serial['p99_ms']} ms")
            _say(f"(a) check latency at {CHECK_RATE:,}/s for {sizes.latency_seconds:g} s")
            readings_before = await _worker_readings(session, port)
            with bench.cpu.phase("latency"):
                figures: Figures = {}
                with clock.measure(figures):
                    figures.update(await _open_loop(session, urls, CHECK_RATE, sizes.latency_seconds, rng))
            lag = _loop_lag_delta(readings_before, await _worker_readings(session, port))
            out["latency"] = figures | {"background_events_per_s": 0} | lag
            _say(f"    p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")

            # -- (b) with a steady usage stream: latency again, then freshness --------------
            background = _Background(
                bench.bootstrap, topics.usage_events, steady, ingest_rate, BACKGROUND_EVENTS_PER_RECORD
            )
            background.start()
            try:
                await asyncio.sleep(2.0)  # the stream flows and flushes land before measuring
                _say(f"(a') check latency at {CHECK_RATE:,}/s with {ingest_rate:,} usage events/s ingested")
                readings_before = await _worker_readings(session, port)
                backlog: Figures = {}
                with bench.cpu.phase("latency_under_load"):
                    figures = {}
                    with clock.measure(figures):
                        async with sampled_backlog(session, port, backlog):
                            figures.update(
                                await _open_loop(
                                    session,
                                    urls,
                                    CHECK_RATE,
                                    sizes.latency_seconds,
                                    rng,
                                    TARGET_CHECK_UNDER_LOAD_P99_MS,
                                )
                            )
                readings_after = await _worker_readings(session, port)
                flushes = _flush_delta(readings_before, readings_after) | _loop_lag_delta(
                    readings_before, readings_after
                )
                out["latency_under_load"] = figures | {"background_events_per_s": ingest_rate} | flushes | backlog
                _say(f"    p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")

                _say(f"(b) freshness: {len(trials)} trials with {ingest_rate:,} usage events/s ingested")
                readings_before = await _worker_readings(session, port)
                fresh_backlog: Figures = {}
                with bench.cpu.phase("freshness"):
                    usage_cpu: Figures = {}
                    with clock.measure(usage_cpu):
                        async with sampled_backlog(session, port, fresh_backlog):
                            fresh = await _freshness(
                                worker,
                                producer,
                                topics.usage_events,
                                check,
                                trials,
                                flush_s,
                                rng,
                                backlog=lambda: _worker_backlog(session, port),
                            )
                readings_after = await _worker_readings(session, port)
                flushes = _flush_delta(readings_before, readings_after) | _loop_lag_delta(
                    readings_before, readings_after
                )
                background.raise_if_failed()
            finally:
                stats = background.stop()
            out["freshness"] = (
                fresh
                | {
                    "background_events_per_s": ingest_rate,
                    "background_achieved_per_s": stats["events_per_s"],
                    "worker_cpu_cores": usage_cpu["worker_cpu_cores"],
                    "worker_children_cpu_cores": usage_cpu["worker_children_cpu_cores"],
                }
                | flushes
                | fresh_backlog
            )
            _say(f"    p50 {fresh['p50_s']} s, p99 {fresh['p99_s']} s")

    # The worker kept up with the stream: its commits reach the stream's log end soon after it stops.
    stopped = time.time()
    try:
        caught_up = await bench._wait_caught_up(worker, stats.pop("ends"), 120.0)
        stats["caught_up_after_stop_s"] = round(caught_up - stopped, 2)
    except BenchError:
        stats["caught_up_after_stop_s"] = None
    out["background"] = stats
    out["targets"] = _verdicts(out)
    out["contention"] = bench.cpu.phases
    return out
