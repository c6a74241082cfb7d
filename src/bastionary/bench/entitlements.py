"""``bastionary bench --entitlements``: the check API measured against its targets.

The same embedded stack as ``bastionary bench`` (see :mod:`bastionary.bench`): one embedded
broker (Tansu) and one ``bastionary worker`` subprocess with a fresh data dir (chdb
in-process), a fresh topic prefix and consumer group, all torn down afterwards. The worker
gets a catalog of its own (written to the temp dir), a random API key, rating off, and the
default flush interval. The load generator runs in this process, the worker in its own.

Set-up: N "steady" customers (plan limit 10^9: never exhausted) and K "trial" customers
(plan limit ``TRIAL_LIMIT``) are subscribed through ``billing.subscriptions``; one check per
customer then loads its state in the worker (warm-up), and the worker is left to settle
(see :func:`_settle`). One check at a time is timed first: the cost without queueing.

(a) check latency: an open-loop client (asyncio + aiohttp, one keep-alive session) sends
    ``GET /v1/customers/{c}/entitlements/api_calls`` for random steady customers at fixed
    scheduled times, 1,000/s. Latency is counted from the *scheduled* send time to the
    whole answer read (so a stall delays every request queued behind it: no coordinated
    omission); the time from the actual send is reported too. Run once on an idle worker
    (the figure held against the target) and once while the steady usage stream below
    is being ingested (for information).
(b) freshness: while a steady stream of usage (``BACKGROUND_RATE`` single-event records/s
    for the steady customers) is ingested by the same worker, each trial customer gets
    ``TRIAL_LIMIT - 1`` events, is polled until its check shows them, then, after a random
    pause within one flush interval, gets the one event that exhausts its limit. Its check
    is polled every ``POLL_S`` until it answers ``has_access: false``. Freshness is the
    arrival of that answer minus the moment just before the event was handed to the
    producer (linger 0; also reported from the broker's ack). The background stream comes
    from a thread of this process, with its own event loop and producer.

Reported with each phase: the CPU the worker and this process used (so a figure can be
told apart from a starved machine), the worker's flush durations during the trials (from
its ``/metrics``), and, as ``bastionary bench`` does, how much of the machine other
processes used. Targets are reported as met or missed, never enforced.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson

from bastionary.bench.options import CONTENTION_WARNING, PARTITIONS, BenchError
from bastionary.bench.processes import _Processes, _say, _sigterm_as_interrupt
from bastionary.bench.report import machine_info
from bastionary.bench.stack import _Bench, _Worker
from bastionary.embedded.broker import EmbeddedBroker, free_port
from bastionary.settings import Settings, format_iso_duration
from bastionary.topics import Topics

__all__ = ["render_entitlements", "run_entitlements_bench"]

CHECK_RATE = 1_000  # checks/s against the one worker
TARGET_CHECK_P99_MS = 5.0
TARGET_FRESHNESS_P99_S = 1.0
BACKGROUND_RATE = 500  # usage events/s of the steady customers during (b)
TRIAL_LIMIT = 5  # the trial plan's hard limit: 4 events, then the one that exhausts it
STEADY_LIMIT = 1_000_000_000
FEATURE = "api_calls"
POLL_S = 0.005  # how often a trial customer's check is asked during (b)
TRIAL_TIMEOUT_S = 30.0
SETTLED_CORES = 0.2  # the worker counts as idle below this CPU use (cores, over a second)
MAX_CONNECTIONS = 64  # keep-alive connections the client may open when answers queue up


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

    def __init__(self, extra: dict[str, str]):
        super().__init__()
        self.extra = extra

    def spawn(self, command, env, log_path):
        return super().spawn(command, env | self.extra, log_path)


# -- the benchmark ---------------------------------------------------------------------------


def run_entitlements_bench(quick: bool = False, data_dir: Path | None = None) -> dict:
    """Measure check latency and freshness on a fresh embedded stack; see :func:`render_entitlements`."""
    started = time.monotonic()
    sizes = QUICK if quick else FULL
    temporary = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="bastionary-bench-ent-")) if temporary else Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
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
    result: dict = {
        "options": {
            "quick": quick,
            "customers": sizes.customers,
            "trial_customers": sizes.trials,
            "check_rate_per_s": CHECK_RATE,
            "latency_seconds": sizes.latency_seconds,
            "background_events_per_s": BACKGROUND_RATE,
            "trial_limit": TRIAL_LIMIT,
            "flush_interval": format_iso_duration(flush_interval),
            "kafka_fetch_max_wait": format_iso_duration(defaults["kafka_fetch_max_wait"].default),
            "partitions": PARTITIONS,
            "poll_interval_ms": POLL_S * 1000,
            "latency_timing": "open loop at fixed scheduled times: answer read - scheduled send",
            "freshness_timing": "has_access:false answer received - just before the exhausting event was produced",
        },
        "machine": machine_info(),
    }
    try:
        with _sigterm_as_interrupt():
            broker = EmbeddedBroker(root / "broker")
            try:
                broker.start()
                bench = _Bench(root, processes, broker)
                result.update(_run(bench, sizes, port, key, flush_interval.total_seconds()))
            finally:
                processes.stop_all()
                broker.stop()
    finally:
        processes.stop_all()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _run(bench: _Bench, sizes: _Sizes, port: int, key: str, flush_s: float) -> dict:
    from bastionary.kafka import ensure_topics

    prefix, group = bench.names("entitlements")
    topics = Topics(prefix)
    asyncio.run(ensure_topics(bench.bootstrap, topics.all(), PARTITIONS))
    _say(f"starting a worker (checks on port {port})")
    worker = bench.start_worker("entitlements", prefix, group)
    try:
        return asyncio.run(_measure(bench, worker, topics, sizes, port, key, flush_s))
    finally:
        bench.processes.stop(worker.process)


async def _measure(bench: _Bench, worker: _Worker, topics: Topics, sizes: _Sizes, port: int, key: str,
                   flush_s: float) -> dict:
    import aiohttp

    from bastionary.kafka import UsageProducer

    out: dict = {}
    rng = random.Random(7)
    steady = [f"ent-{bench.tag}-s{i:05d}" for i in range(sizes.customers)]
    trials = [f"ent-{bench.tag}-t{i:04d}" for i in range(sizes.trials)]
    base = f"http://127.0.0.1:{port}/v1/customers"
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def check(customer: str) -> tuple[int, dict | None]:
            async with session.get(f"{base}/{customer}/entitlements/{FEATURE}") as response:
                body = await response.read()
                return response.status, (orjson.loads(body) if body else None)

        async with UsageProducer(bench.bootstrap, linger_ms=0) as producer:
            # -- set-up: subscriptions, then one check per customer loads its state --------
            start = datetime.now(timezone.utc) - timedelta(days=1)
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
            with bench.cpu.phase("latency"):
                figures: dict = {}
                with clock.measure(figures):
                    figures.update(await _open_loop(session, urls, CHECK_RATE, sizes.latency_seconds, rng))
            out["latency"] = figures | {"background_events_per_s": 0}
            _say(f"    p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")

            # -- (b) with a steady usage stream: latency again, then freshness --------------
            background = _Background(bench.bootstrap, topics.usage_events, steady, BACKGROUND_RATE)
            background.start()
            try:
                await asyncio.sleep(2.0)  # the stream flows and flushes land before measuring
                _say(f"(a') check latency at {CHECK_RATE:,}/s with {BACKGROUND_RATE}/s usage ingested")
                with bench.cpu.phase("latency_under_load"):
                    figures = {}
                    with clock.measure(figures):
                        figures.update(await _open_loop(session, urls, CHECK_RATE, sizes.latency_seconds, rng))
                out["latency_under_load"] = figures | {"background_events_per_s": BACKGROUND_RATE}
                _say(f"    p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")

                _say(f"(b) freshness: {len(trials)} trials with {BACKGROUND_RATE}/s usage ingested")
                flushes_before = await _flush_metrics(session, port)
                with bench.cpu.phase("freshness"):
                    usage_cpu: dict = {}
                    with clock.measure(usage_cpu):
                        fresh = await _freshness(worker, producer, topics.usage_events, check, trials, flush_s, rng)
                flushes = _flush_delta(flushes_before, await _flush_metrics(session, port))
                background.raise_if_failed()
            finally:
                stats = background.stop()
            out["freshness"] = fresh | {"background_events_per_s": BACKGROUND_RATE,
                                        "background_achieved_per_s": stats["events_per_s"],
                                        "worker_cpu_cores": usage_cpu["worker_cpu_cores"]} | flushes
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


# -- set-up ----------------------------------------------------------------------------------


def _subscription(customer: str, plan: str, start: datetime) -> dict:
    return {
        "specversion": "1.0", "id": f"sub-{customer}", "source": "bastionary-bench-entitlements",
        "type": "bastionary.subscription.created.v1", "subject": customer, "time": start.isoformat(),
        "data": {"subscription_id": f"sub-{customer}", "customer_id": customer, "plan": plan,
                 "start": start.isoformat()},
    }  # fmt: skip


def _usage(customer: str, event_id: str) -> bytes:
    return orjson.dumps({
        "specversion": "1.0", "id": event_id, "source": "bastionary-bench-entitlements", "type": "api.request",
        "subject": customer, "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": {"method": "GET"},
    })  # fmt: skip


async def _wait_ready(worker: _Worker, check, customer: str, timeout: float) -> None:
    """Until the worker's web server answers for its partitions (503 not_ready before)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        worker.check_alive()
        try:
            status, body = await check(customer)
            if status in (200, 404):  # 404: its subscription has not landed yet, but routing works
                return
            last = (status, body)
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise BenchError(f"the worker's check API was not ready in {timeout:.0f}s (last: {last!r}); see {worker.log_path}")


async def _warm_up(worker: _Worker, check, customers: list[str], timeout: float) -> None:
    """One check per customer loads its state (a 404 is retried until its subscription lands)."""
    deadline = time.monotonic() + timeout
    pending = list(customers)
    semaphore = asyncio.Semaphore(16)

    async def warm(customer: str) -> bool:
        async with semaphore:
            status, _ = await check(customer)
            return status == 200

    while pending:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} customers never answered 200 in {timeout:.0f}s; see {worker.log_path}")
        done = await asyncio.gather(*(warm(c) for c in pending))
        pending = [c for c, ok in zip(pending, done) if not ok]
        if pending:
            await asyncio.sleep(0.5)


async def _settle(worker: _Worker, clock: "_CpuClock", timeout: float) -> tuple[float, float]:
    """Wait until the worker idles: (seconds waited, its CPU in cores over the last second).

    Its change poll looks back ``POLL_WINDOW`` (5 s) every second, so a freshly subscribed
    customer is invalidated, and re-read by the reconciler, for a few seconds after its
    subscription landed; with many new customers that keeps the worker busy for a while.
    """
    started = time.monotonic()
    quiet = 0
    cores = float("nan")
    while time.monotonic() - started < timeout:
        worker.check_alive()
        before = clock.worker()
        await asyncio.sleep(1.0)
        cores = round(clock.worker() - before, 2)
        quiet = quiet + 1 if cores < SETTLED_CORES else 0
        if quiet >= 2:
            break
    return round(time.monotonic() - started, 1), cores


# -- (a) check latency -----------------------------------------------------------------------


def _urls(base: str, customers: list[str]) -> list:
    """Built once: parsing a URL per request would be the client's cost, not the worker's."""
    from yarl import URL

    return [URL(f"{base}/{customer}/entitlements/{FEATURE}", encoded=True) for customer in customers]


class _CpuClock:
    """CPU seconds of the worker process and of this (the bench) process, for per-check figures."""

    def __init__(self, worker: _Worker):
        self.pid = worker.process.pid
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def worker(self) -> float:
        try:
            fields_ = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields_[11]) + int(fields_[12])) / self._tick

    @contextlib.contextmanager
    def measure(self, into: dict, checks: int | None = None):
        wall, worker, ours = time.monotonic(), self.worker(), time.process_time()
        yield
        seconds = max(time.monotonic() - wall, 1e-6)
        used = self.worker() - worker
        into["worker_cpu_cores"] = round(used / seconds, 2)
        into["bench_cpu_cores"] = round((time.process_time() - ours) / seconds, 2)
        count = into.get("requests", checks)
        if count:
            into["worker_cpu_ms_per_check"] = round(1000 * used / count, 3)


async def _serial(session, urls: list, seconds: float, rng: random.Random) -> dict:
    """One check at a time: what a check costs without any queueing."""
    durations: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        async with session.get(rng.choice(urls)) as response:
            await response.read()
            status = response.status
        if status == 200:
            durations.append(time.perf_counter() - sent)
        else:
            errors += 1
    durations.sort()
    return {
        "requests": len(durations) + errors,
        "errors": errors,
        "p50_ms": _ms(durations, 0.50),
        "p99_ms": _ms(durations, 0.99),
        "max_ms": round(1000 * durations[-1], 2) if durations else None,
    }


async def _open_loop(session, urls: list, rate: float, seconds: float, rng: random.Random) -> dict:
    """Checks at fixed scheduled times, whatever the answers do (open loop)."""
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    interval = 1.0 / rate
    from_scheduled: list[float] = []
    from_sent: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def one(url, scheduled: float) -> None:
        sent = loop.time()
        try:
            async with session.get(url) as response:
                await response.read()
                status = response.status
        except Exception as exc:  # noqa: BLE001 - counted as an error, the schedule goes on
            failures.append(type(exc).__name__)
            return
        done = loop.time()
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            from_scheduled.append(done - scheduled)
            from_sent.append(done - sent)
            lags.append(sent - scheduled)

    tasks = []
    began = loop.time() + 0.01
    for i in range(total):
        scheduled = began + i * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(rng.choice(urls), scheduled)))
    sending = loop.time() - began
    await asyncio.gather(*tasks)
    from_scheduled.sort()
    from_sent.sort()
    lags.sort()
    errors = total - statuses.get(200, 0)
    return {
        "requests": total,
        "seconds": round(sending, 2),
        "rate": round(total / max(sending, 1e-6)),
        "ok": statuses.get(200, 0),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": len(failures),
        "p50_ms": _ms(from_scheduled, 0.50),
        "p90_ms": _ms(from_scheduled, 0.90),
        "p99_ms": _ms(from_scheduled, 0.99),
        "max_ms": round(1000 * from_scheduled[-1], 2) if from_scheduled else None,
        "mean_ms": round(1000 * statistics.fmean(from_scheduled), 2) if from_scheduled else None,
        "from_send_p50_ms": _ms(from_sent, 0.50),
        "from_send_p99_ms": _ms(from_sent, 0.99),
        "client_lag_p99_ms": _ms(lags, 0.99),
        "target_p99_ms": TARGET_CHECK_P99_MS,
        "met": errors == 0 and bool(from_scheduled) and _ms(from_scheduled, 0.99) <= TARGET_CHECK_P99_MS,
    }


# -- (b) freshness ---------------------------------------------------------------------------


class _Background:
    """A steady stream of single-event usage records from a thread with its own loop and producer."""

    def __init__(self, bootstrap: str, topic: str, customers: list[str], rate: float):
        self.bootstrap, self.topic, self.customers, self.rate = bootstrap, topic, customers, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-background-usage", daemon=True)
        self._error: BaseException | None = None
        self._stats: dict = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(60)
        self.raise_if_failed()
        return self._stats

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise BenchError(f"the background usage stream failed: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._stream())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._error = exc

    async def _stream(self) -> None:
        from bastionary.kafka import UsageProducer

        ends: dict[int, int] = {}

        def acked(future) -> None:
            if not future.cancelled() and future.exception() is None:
                meta = future.result()
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)

        rng = random.Random(11)
        tag = secrets.token_hex(4)
        async with UsageProducer(self.bootstrap, linger_ms=5) as producer:
            started = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate) + 1
                while sent < due:
                    customer = rng.choice(self.customers)
                    future = await producer.send(self.topic, _usage(customer, f"bg-{tag}-{sent}"),
                                                 key=customer.encode())
                    future.add_done_callback(acked)
                    sent += 1
                await asyncio.sleep(0.01)
            seconds = time.monotonic() - started
            await producer.flush()
        self._stats = {"events": sent, "seconds": round(seconds, 1), "events_per_s": round(sent / max(seconds, 1e-6)),
                       "ends": ends}


async def _freshness(worker: _Worker, producer, topic: str, check, customers: list[str], flush_s: float,
                     rng: random.Random) -> dict:
    from_send: list[float] = []
    from_ack: list[float] = []
    missing = 0
    for n, customer in enumerate(customers):
        worker.check_alive()
        # TRIAL_LIMIT - 1 events, landed and counted.
        futures = [await producer.send(topic, _usage(customer, f"{customer}-{i}"), key=customer.encode())
                   for i in range(TRIAL_LIMIT - 1)]
        await asyncio.gather(*futures)
        deadline = time.monotonic() + TRIAL_TIMEOUT_S
        while True:
            status, body = await check(customer)
            if status == 200 and Decimal(body["usage"]) >= TRIAL_LIMIT - 1:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"trial {customer}: {TRIAL_LIMIT - 1} events not counted in {TRIAL_TIMEOUT_S:.0f}s"
                                 f" (last {status} {body}); see {worker.log_path}")
            await asyncio.sleep(0.02)
        if body["has_access"] is not True:
            raise BenchError(f"trial {customer}: no access before its limit: {body}")
        # Anywhere within a flush cycle, as a real event would arrive.
        await asyncio.sleep(rng.uniform(0, flush_s))
        before = time.monotonic()
        future = await producer.send(topic, _usage(customer, f"{customer}-last"), key=customer.encode())
        await future
        acked = time.monotonic()
        deadline = acked + TRIAL_TIMEOUT_S
        while True:
            status, body = await check(customer)
            seen = time.monotonic()
            if status == 200 and body["has_access"] is False:
                if body.get("reason") != "exhausted":
                    raise BenchError(f"trial {customer}: denied for another reason: {body}")
                from_send.append(seen - before)
                from_ack.append(seen - acked)
                break
            if seen > deadline:
                missing += 1
                break
            await asyncio.sleep(POLL_S)
        flipped = f"{seen - before:.3f} s" if status == 200 and body["has_access"] is False else "never flipped"
        _say(f"    trial {n + 1}/{len(customers)}: {flipped}")
    from_send.sort()
    from_ack.sort()
    p99 = _seconds(from_send, 0.99)
    return {
        "trials": len(customers),
        "flipped": len(from_send),
        "missing": missing,
        "p50_s": _seconds(from_send, 0.50),
        "p90_s": _seconds(from_send, 0.90),
        "p99_s": p99,
        "max_s": round(from_send[-1], 3) if from_send else None,
        "min_s": round(from_send[0], 3) if from_send else None,
        "from_ack_p50_s": _seconds(from_ack, 0.50),
        "from_ack_p99_s": _seconds(from_ack, 0.99),
        "target_p99_s": TARGET_FRESHNESS_P99_S,
        "met": missing == 0 and bool(from_send) and p99 <= TARGET_FRESHNESS_P99_S,
    }


async def _flush_metrics(session, port: int) -> dict[str, float]:
    """The worker's flush-duration histogram (``/metrics``): sum, count and bucket counts."""
    out: dict[str, float] = {}
    with contextlib.suppress(Exception):
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("bastionary_usage_flush_seconds"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def _flush_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """Flushes that landed during the freshness trials: how many, how long on average, the slowest bucket."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    count = delta.get("bastionary_usage_flush_seconds_count", 0.0)
    if not count:
        return {"flushes": 0}
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v) for k, v in delta.items() if k.startswith(
            "bastionary_usage_flush_seconds_bucket") and "+Inf" not in k)
    p99_bucket = next((le for le, n in buckets if n >= 0.99 * count), None)
    return {
        "flushes": int(count),
        "flush_mean_s": round(delta.get("bastionary_usage_flush_seconds_sum", 0.0) / count, 3),
        "flush_p99_at_most_s": p99_bucket,  # the histogram bucket holding the 99th percentile
    }


# -- figures ---------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = q * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _ms(sorted_values: list[float], q: float) -> float | None:
    return round(1000 * _percentile(sorted_values, q), 2) if sorted_values else None


def _seconds(sorted_values: list[float], q: float) -> float | None:
    return round(_percentile(sorted_values, q), 3) if sorted_values else None


def _verdicts(out: dict) -> dict:
    return {
        "check_latency_p99_ms": {"target": f"<= {TARGET_CHECK_P99_MS:g} ms at {CHECK_RATE:,} checks/s",
                                 "met": out["latency"]["met"]},
        "freshness_p99_s": {"target": f"<= {TARGET_FRESHNESS_P99_S:g} s under {BACKGROUND_RATE} events/s",
                            "met": out["freshness"]["met"]},
    }


# -- output ----------------------------------------------------------------------------------


def render_entitlements(result: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2, default=str)
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=False)
    options = result["options"]

    def verdict(met: bool) -> str:
        return "MET" if met else "MISSED"

    def latency_row(title: str, figures: dict, judged: bool) -> None:
        errors = f", {figures['errors']} not 200" if figures["errors"] else ""
        table.add_row(
            title,
            f"{figures['p50_ms']} ms / {figures['p99_ms']} ms",
            f"p99 <= {figures['target_p99_ms']:g} ms ({figures['rate']:,} checks/s achieved{errors})",
            verdict(figures["met"]) + ("" if judged else " (info)"),
        )

    table = Table(title="bastionary bench --entitlements", title_justify="left")
    table.add_column("figure")
    table.add_column("p50 / p99", justify="right")
    table.add_column("target")
    table.add_column("", justify="center")
    latency_row("check latency, idle worker", result["latency"], True)
    if "latency_under_load" in result:
        loaded = result["latency_under_load"]
        latency_row(f"check latency, {loaded['background_events_per_s']} usage events/s", loaded, False)
    fresh = result["freshness"]
    missing = f", {fresh['missing']} never flipped" if fresh["missing"] else ""
    table.add_row(
        "freshness: exhausting event -> has_access false",
        f"{fresh['p50_s']} s / {fresh['p99_s']} s",
        f"p99 <= {fresh['target_p99_s']:g} s ({fresh['trials']} trials under"
        f" {fresh['background_events_per_s']} events/s{missing})",
        verdict(fresh["met"]),
    )
    console.print(table)

    serial = result.get("latency_serial")
    if serial:
        console.print(
            f"one check at a time (no queueing): p50 {serial['p50_ms']} ms, p99 {serial['p99_ms']} ms"
            f" over {serial['requests']:,} checks; idle worker CPU {result.get('worker_idle_cpu_cores')} cores"
        )
    for name in ("latency", "latency_under_load"):
        figures = result.get(name)
        if figures:
            console.print(
                f"{name}: {figures['requests']:,} checks over {figures['seconds']:.1f} s; p90 {figures['p90_ms']} ms,"
                f" max {figures['max_ms']} ms; from the actual send p50 {figures['from_send_p50_ms']} ms,"
                f" p99 {figures['from_send_p99_ms']} ms; client scheduling lag p99 {figures['client_lag_p99_ms']} ms;"
                f" worker CPU {figures.get('worker_cpu_cores')} cores"
                f" ({figures.get('worker_cpu_ms_per_check')} ms per check), bench CPU {figures.get('bench_cpu_cores')}"
                " cores"
            )
    background = result.get("background", {})
    console.print(
        f"freshness: max {fresh['max_s']} s; from the broker ack p50 {fresh['from_ack_p50_s']} s,"
        f" p99 {fresh['from_ack_p99_s']} s; checks polled every {options['poll_interval_ms']:g} ms;"
        f" background {background.get('events', 0):,} events at {background.get('events_per_s', 0)}/s"
        f" (worker caught up {background.get('caught_up_after_stop_s')} s after the stream stopped);"
        f" {fresh.get('flushes', 0)} flushes landed during the trials, mean {fresh.get('flush_mean_s')} s,"
        f" p99 <= {fresh.get('flush_p99_at_most_s')} s; worker CPU {fresh.get('worker_cpu_cores')} cores"
    )
    console.print(
        f"setup: {options['customers']:,} steady + {options['trial_customers']} trial customers"
        f" (warm-up {result.get('warmup', {}).get('seconds')} s); flush interval {options['flush_interval']},"
        f" fetch max wait {options['kafka_fetch_max_wait']}, {options['partitions']} partitions, one worker"
    )
    console.print(f"timing: latency = {options['latency_timing']}; freshness = {options['freshness_timing']}")

    contention = result.get("contention") or {}
    if contention:
        busy = Table(title="CPU during each phase (share of all cores)", title_justify="left")
        for column in ("phase", "seconds", "bench + its children", "other processes", "load avg 1m"):
            busy.add_column(column, justify="left" if column == "phase" else "right")
        for name, phase in contention.items():
            busy.add_row(
                name, f"{phase['seconds']:.0f}", f"{phase['bench_cpu_share']:.0%}",
                f"{phase['others_cpu_share']:.0%}", f"{phase['load_avg_1m']:.2f}",
            )  # fmt: skip
        console.print(busy)
        noisy = [n for n, p in contention.items() if p["others_cpu_share"] > CONTENTION_WARNING]
        if noisy:
            console.print(
                f"WARNING: other processes used more than {CONTENTION_WARNING:.0%} of the machine during"
                f" {', '.join(noisy)}: those figures understate the check API; rerun on a quiet machine."
            )

    machine = result["machine"]
    info = Table(title="machine", title_justify="left", show_header=False)
    info.add_column("key")
    info.add_column("value")
    info.add_row("nproc", str(machine.get("nproc")))
    info.add_row("CPU", str(machine.get("cpu_model")))
    info.add_row("RAM", f"{machine.get('ram_gb')} GB")
    info.add_row("python", str(machine.get("python")))
    versions = ", ".join(f"{p} {machine[p]}" for p in ("faust-streaming", "aiokafka", "chdb") if p in machine)
    info.add_row("packages", versions)
    quick = " (quick sizes)" if options.get("quick") else ""
    info.add_row("elapsed", f"{result.get('elapsed_s', 0):.0f} s{quick}")
    console.print(info)
    return console.file.getvalue().rstrip()
