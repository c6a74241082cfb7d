"""``bastionary bench``: the pipeline measured against its targets on the embedded stack.

Everything runs on a stack the benchmark starts and tears down itself: one embedded broker
(Tansu) and, per phase, one ``bastionary worker`` subprocess with a fresh data dir (so it
holds chdb in-process and serves the query gateway), a fresh topic prefix and a fresh
consumer group. The phases:

(a) bare Faust ceiling: :mod:`bastionary.worker.bare` (one agent that only counts) reads
    the single-event records of (b); records/s from the first to the last record counted.
(b) pipeline throughput: the same workload as single-event records, then packed into
    100-event batch records; pre-published, then a worker started on it; timed from its
    first consumed record to "caught up" (committed offsets at the log end).
(c) end-to-end latency: events produced at half the single-record maximum, each polled
    for in ``usage_events`` through the gateway; visible time minus produce time.
(d) peak RSS (VmHWM) of a worker that has ingested ``dedupe_ids`` distinct ids.
(e) exactness: ClickHouse totals of (b) and (d) against the workload's ground truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson

from bastionary.embedded.broker import EmbeddedBroker, _die_with_parent, free_port
from bastionary.topics import Topics
from bastionary.workload import Record, Workload, generate

PARTITIONS = 4  # the default BASTIONARY_USAGE_PARTITIONS, which the workers use
BATCH_EVENTS = 100
SESSION_TIMEOUT = "PT3S"  # quick group joins (Tansu holds a join for half of it)

TARGET_SINGLE_RATIO = 0.8  # single-event records/s >= 0.8 x the bare Faust ceiling
TARGET_BATCH_EVENTS_PER_S = 100_000  # per worker process, 100-event records
TARGET_P99_S = 1.0
TARGET_RSS_MB = 500
TARGET_RSS_IDS = 1_000_000
LATENCY_POLL_SECONDS = 0.05  # how often the latency phase asks the gateway for newly visible ids
CONTENTION_WARNING = 0.10  # other processes' share of the cores above which a phase is flagged

_QUICK = {"events": 20_000, "dedupe_ids": 50_000, "latency_seconds": 5.0}


@dataclass
class BenchOptions:
    events: int = 200_000  # per throughput run
    dedupe_ids: int = 1_000_000  # distinct ids kept inside the dedupe horizon for the RSS figure
    latency_seconds: float = 20.0
    data_dir: Path | None = None  # default: a fresh temp dir, removed afterwards
    quick: bool = False  # small sizes for the test (e.g. 20k events, 50k ids, 5 s)

    def __post_init__(self) -> None:
        # Quick sizes replace the defaults only; a value set explicitly (or later, as the
        # CLI does for --events and --dedupe-ids) wins.
        if self.quick:
            for f in fields(self):
                if f.name in _QUICK and getattr(self, f.name) == f.default:
                    setattr(self, f.name, _QUICK[f.name])


class BenchError(RuntimeError):
    pass


# -- processes -------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _bastionary_command() -> list[str]:
    script = Path(sys.executable).parent / "bastionary"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bastionary.cli.main"]


class _Processes:
    """Every child the benchmark starts; all of them are stopped on the way out, whatever happens."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen] = []

    def spawn(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # SIGTERM when the benchmark dies, even by SIGKILL (Linux).
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        self._children.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 20.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ValueError):
            self._children.remove(process)

    def stop_all(self) -> None:
        for process in list(self._children):
            with contextlib.suppress(Exception):
                self.stop(process)


class _CpuMeter:
    """How much of the machine other processes used while a phase ran.

    The benchmark's own CPU time is this process plus every child it started (reaped ones
    through ``os.times()``, live ones through ``/proc/<pid>/stat``); the machine's is the
    busy time in ``/proc/stat``. What is left belongs to someone else, and a figure taken
    while others held the cores is not a figure of the pipeline.
    """

    def __init__(self, processes: _Processes, broker: EmbeddedBroker):
        self.processes = processes
        self.broker = broker
        self.phases: dict[str, dict] = {}
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def _machine_busy(self) -> float:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        busy = sum(values[:8]) - idle  # guest time is already inside user
        return busy / self._tick

    def _ours(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        live = list(self.processes._children)
        broker_process = getattr(self.broker, "_process", None)
        if broker_process is not None:
            live.append(broker_process)
        for process in live:
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields_ = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields_[11]) + int(fields_[12])) / self._tick  # utime, stime
        return total

    @contextlib.contextmanager
    def phase(self, name: str):
        try:
            wall, busy, ours = time.monotonic(), self._machine_busy(), self._ours()
        except OSError:  # no /proc: nothing to say
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                seconds = max(time.monotonic() - wall, 1e-6)
                capacity = seconds * self._cores
                mine = self._ours() - ours
                others = max(0.0, self._machine_busy() - busy - mine)
                self.phases[name] = {
                    "seconds": round(seconds, 1),
                    "bench_cpu_share": round(mine / capacity, 3),
                    "others_cpu_share": round(others / capacity, 3),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks stop the children."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class _Worker:
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    topic: str
    group: str
    started_at: float

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"worker exited with {self.process.returncode}; last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def reader(self, timeout: float = 90.0):
        """A clickhouse-connect client on the worker's query gateway, as the reader."""
        import clickhouse_connect

        from bastionary.storage.clickhouse import gateway_file
        from bastionary.storage.http_gateway import gateway_dsn, read_gateway_file

        path = gateway_file(self.data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            info = read_gateway_file(path)
            if info:
                return clickhouse_connect.get_client(dsn=gateway_dsn(info, "reader"), compress=False)
            time.sleep(0.1)
        raise BenchError(f"the worker's query gateway did not come up in {timeout:.0f}s; see {self.log_path}")

    def consumption_started(self) -> float | None:
        """Wall time at which the worker took in its first record of the topic, from its log.

        The sink logs "partition starts fresh" (or "partition recovered") when the first
        record of a partition reaches it, i.e. after start-up and the group join.
        """
        first = None
        with contextlib.suppress(OSError), self.log_path.open("rb") as fh:
            for line in fh:
                if b"partition " not in line or not line.startswith(b"{"):
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if entry.get("event") in ("partition starts fresh", "partition recovered") and entry.get(
                    "topic"
                ) == self.topic:
                    stamp = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()
                    first = stamp if first is None else min(first, stamp)
        return first

    def status_kb(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.process.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
        return out


class _Bench:
    def __init__(self, root: Path, processes: _Processes, broker: EmbeddedBroker):
        self.root = root
        self.processes = processes
        self.broker = broker
        self.tag = uuid.uuid4().hex[:8]
        self.cpu = _CpuMeter(processes, broker)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def names(self, phase: str) -> tuple[str, str]:
        """A fresh topic prefix and consumer group for one run."""
        return f"bench-{self.tag}-{phase}.", f"bench-{self.tag}-{phase}"

    def create_topics(self, prefix: str) -> str:
        from bastionary.kafka import ensure_topics

        topics = Topics(prefix)
        asyncio.run(ensure_topics(self.bootstrap, [topics.usage_events, topics.usage_dlq], PARTITIONS))
        return topics.usage_events

    def publish(self, topic: str, records: list[Record]) -> dict[int, int]:
        from bastionary.kafka import publish_records

        return asyncio.run(publish_records(self.bootstrap, topic, records))

    def start_worker(self, phase: str, prefix: str, group: str) -> _Worker:
        data_dir = self.root / phase
        data_dir.mkdir(parents=True, exist_ok=True)
        # Only our settings: an inherited BASTIONARY_* (a DSN, a catalog, a prefix) would
        # measure something else than the embedded defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")} | {
            "BASTIONARY_KAFKA_BOOTSTRAP": self.bootstrap,
            "BASTIONARY_DATA_DIR": str(data_dir),
            "BASTIONARY_TOPIC_PREFIX": prefix,
            "BASTIONARY_CONSUMER_GROUP": group,
            "BASTIONARY_WORKER_ID": f"bench-{phase}",
            "BASTIONARY_WEB_PORT": str(free_port()),
            "BASTIONARY_KAFKA_SESSION_TIMEOUT": SESSION_TIMEOUT,
            "BASTIONARY_LOG_FORMAT": "json",
        }
        log_path = self.root / "logs" / f"worker-{phase}.log"
        process = self.processes.spawn(_bastionary_command() + ["worker"], env, log_path)
        return _Worker(process, data_dir, log_path, Topics(prefix).usage_events, group, time.time())

    def wait_caught_up(self, worker: _Worker, ends: dict[int, int], timeout: float) -> float:
        """Poll the group's committed offsets until every partition is at its log end.

        Returns the wall time it was first seen. Commits follow the ClickHouse writes
        (see metering/sink.py), so this is "landed"; Faust commits once a second
        (broker_commit_interval), so the moment seen trails the last landing by up to
        ~1 s plus the 50 ms poll: a conservative end mark.
        """
        return asyncio.run(self._wait_caught_up(worker, ends, timeout))

    async def _wait_caught_up(self, worker: _Worker, ends: dict[int, int], timeout: float) -> float:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        wanted = {TopicPartition(worker.topic, p): o for p, o in ends.items() if o > 0}
        # A consumer that never subscribes only reads the group's offsets; it does not join it.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=worker.group, enable_auto_commit=False)
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            committed: dict = {}
            while time.monotonic() < deadline:
                worker.check_alive()
                pending = [tp for tp, end in wanted.items() if committed.get(tp, -1) < end]
                if not pending:
                    return time.time()
                try:
                    values = await asyncio.gather(*(consumer.committed(tp) for tp in pending))
                except Exception:  # the coordinator is busy with a rebalance: ask again
                    values = [None] * len(pending)
                seen = time.time()
                committed.update({tp: v for tp, v in zip(pending, values) if v is not None})
                if all(committed.get(tp, -1) >= end for tp, end in wanted.items()):
                    return seen
                await asyncio.sleep(0.05)
            raise BenchError(f"worker not caught up after {timeout:.0f}s: wanted {ends}, committed {committed}")
        finally:
            await consumer.stop()


# -- workloads -------------------------------------------------------------------------------


def _batched(records: list[Record], size: int) -> list[Record]:
    """The same events as ``records`` (single-event records), packed ``size`` to a record.

    Members of a record share its key (the customer), and every repeat of an event keeps its
    customer's partition: dedupe is per partition. (``workload.generate(batch_size=100)``
    splits each 100-event slice of the stream by customer, so with hundreds of customers its
    records carry ~1.2 events each, not 100.)
    """
    by_key: dict[bytes, list[bytes]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record.value)
    chunks = {
        key: [values[i : i + size] for i in range(0, len(values), size)] for key, values in by_key.items()
    }
    out: list[Record] = []
    round_ = 0
    while True:  # round-robin over customers, so every partition fills at the same pace
        added = False
        for key, parts in chunks.items():
            if round_ < len(parts):
                out.append(Record(key, b"[" + b",".join(parts[round_]) + b"]", events=len(parts[round_])))
                added = True
        if not added:
            return out
        round_ += 1


def _distinct_id_records(count: int, customers: int = 300, size: int = BATCH_EVENTS) -> tuple[list[Record], list[dict]]:
    """``count`` events with distinct ids in ``size``-event records, and the events themselves."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    stamps = [(now - timedelta(seconds=s)).isoformat().replace("+00:00", "Z") for s in range(1800)]
    methods = ("GET", "POST", "DELETE")
    events: list[dict] = []
    values: dict[bytes, list[bytes]] = {}
    for i in range(count):
        customer = f"cust-{i % customers:04d}"
        event = {
            "specversion": "1.0",
            "id": f"rss-{i}",
            "source": "bastionary-bench-rss",
            "type": "api.request",
            "subject": customer,
            "time": stamps[i % len(stamps)],
            "data": {"method": methods[i % 3], "path": "/v1/items"},
        }
        events.append(event)
        values.setdefault(customer.encode(), []).append(orjson.dumps(event))
    singles = [Record(key, value, events=1) for key, group in values.items() for value in group]
    return _batched(singles, size), events


# -- exactness -------------------------------------------------------------------------------


def _exactness(client, workload: Workload) -> dict:
    from bastionary.catalog import load_catalog
    from bastionary.storage.queries import usage_query

    truth = workload.truth()
    mismatches: dict[str, int] = {}
    for meter in load_catalog(None).meters:
        sql, params = usage_query(meter, group_by=list(meter.group_by))
        rows = client.query(sql, parameters=params).result_rows
        got = {(c, tuple(sorted(g.items()))): Decimal(v) for c, _, _, g, v in rows}
        want = truth[meter.key]
        wrong = sum(1 for key, value in want.items() if got.get(key) != value)
        unexpected = sum(1 for key in got if key not in want)
        mismatches[meter.key] = wrong + unexpected
    stored = int(client.query("SELECT count() FROM usage_events FINAL").result_rows[0][0])
    accepted, duplicates = client.query(
        "SELECT sum(events_accepted), sum(duplicates) FROM ingest_progress FINAL"
    ).result_rows[0]
    expected = len(workload.unique_events)
    exact = (
        not any(mismatches.values())
        and stored == expected
        and int(accepted or 0) == expected
        and int(duplicates or 0) == workload.duplicates
    )
    return {
        "exact": exact,
        "mismatches": mismatches,
        "stored_events": stored,
        "expected_events": expected,
        "duplicates_dropped": int(duplicates or 0),
        "expected_duplicates": workload.duplicates,
    }


# -- phases ----------------------------------------------------------------------------------


def _bare_ceiling(bench: _Bench, topic: str, records: int, timeout: float) -> dict:
    _, group = bench.names("bare")
    report = bench.root / "bare" / "result.json"
    command = [
        sys.executable, "-m", "bastionary.worker.bare",
        "--bootstrap", bench.bootstrap, "--topic", topic, "--group", group,
        "--expect", str(records), "--report", str(report), "--partitions", str(PARTITIONS),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")}
    log_path = bench.root / "logs" / "bare.log"
    process = bench.processes.spawn(command, env, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not report.exists():
            if process.poll() is not None:
                raise BenchError(f"bare Faust app exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"bare Faust app did not count {records} records in {timeout:.0f}s")
            time.sleep(0.1)
        result = json.loads(report.read_text())
    finally:
        bench.processes.stop(process)
    seconds = max(result["last"] - result["first"], 1e-6)
    return {"records": result["count"], "seconds": round(seconds, 3), "records_per_s": round(result["count"] / seconds)}


def _throughput(bench: _Bench, phase: str, prefix: str, group: str, records: list[Record], ends, workload, timeout):
    """Start a worker on pre-published records; time it from its first record to caught up.

    Timing starts when the worker takes in its first record (its log says so, see
    ``_Worker.consumption_started``), so process start-up, chdb start-up, migrations and the
    consumer group join are left out, while the whole of consumption (including the first
    flush) is counted. The records are published before the worker starts so the producer
    does not compete with it for the two cores. The end is "caught up" as the project
    defines it: committed offsets at the log end (see ``_Bench.wait_caught_up``). Should the
    log mark be missing, the first ingest_progress row stands in (that excludes the first
    flush's records from the count as well, since they were consumed before it).
    """
    worker = bench.start_worker(phase, prefix, group)
    try:
        end = bench.wait_caught_up(worker, ends, timeout)
        client = worker.reader()
        total_records = len(records)
        total_events = sum(r.events for r in records)
        start = worker.consumption_started()
        timing = "first record taken in -> committed at log end"
        counted_records, counted_events = total_records, total_events
        flushes, first_ms, max_flush_events = client.query(
            "SELECT uniqExact(written_at), toUnixTimestamp64Milli(min(written_at)), max(e) FROM (SELECT written_at,"
            " sum(events_accepted + duplicates + dead_lettered) AS e FROM ingest_progress GROUP BY written_at)"
        ).result_rows[0]
        if start is None:
            first_records, first_events = client.query(
                "SELECT sum(records), sum(events_accepted + duplicates + dead_lettered) FROM ingest_progress"
                " WHERE written_at = (SELECT min(written_at) FROM ingest_progress)"
            ).result_rows[0]
            start = first_ms / 1000
            counted_records -= int(first_records)
            counted_events -= int(first_events)
            timing = "first flush marker -> committed at log end (first flush not counted)"
        seconds = max(end - start, 1e-6)
        exactness = _exactness(client, workload)
        return {
            "records": total_records,
            "events": total_events,
            "events_per_record": round(total_events / max(total_records, 1), 1),
            "seconds": round(seconds, 3),
            "records_per_s": round(counted_records / seconds),
            "events_per_s": round(counted_events / seconds),
            "flushes": int(flushes),
            "max_flush_events": int(max_flush_events),
            "startup_s": round(start - worker.started_at, 2),
            "timing": timing,
        }, exactness
    finally:
        bench.processes.stop(worker.process)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = q * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _latency(bench: _Bench, rate: float, seconds: float) -> dict:
    prefix, group = bench.names("latency")
    topic = bench.create_topics(prefix)
    worker = bench.start_worker("latency", prefix, group)
    try:
        client = worker.reader()
        return asyncio.run(_measure_latency(worker, client, bench.bootstrap, topic, rate, seconds))
    finally:
        bench.processes.stop(worker.process)


async def _measure_latency(worker: _Worker, client, bootstrap: str, topic: str, rate: float, seconds: float) -> dict:
    from bastionary.kafka import UsageProducer

    source = "bastionary-bench-latency"
    produced: dict[str, float] = {}  # id -> wall time just before it was handed to the producer
    visible: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    poll_errors: list[str] = []
    round_trips: list[float] = []

    def poll() -> None:
        # Newly visible ids among the pending ones. ingested_at is the record's broker
        # timestamp (the producer's send time), so a window from the oldest pending send
        # (less a second of slack) keeps each answer to the ids still in flight.
        sql = (
            "SELECT event_id FROM usage_events WHERE source = {s:String}"
            " AND ingested_at >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
        )
        while not stop.is_set():
            with lock:
                pending = [produced[i] for i in produced if i not in visible]
            lo = int(((min(pending) if pending else time.time()) - 1.0) * 1000)
            asked = time.time()
            try:
                rows = client.query(sql, parameters={"s": source, "lo": lo}).result_rows
            except Exception as exc:  # noqa: BLE001 - keep polling; reported if it never recovers
                poll_errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                rows = []
            seen = time.time()  # the answer's arrival: an id counts as visible no earlier
            round_trips.append(seen - asked)
            with lock:
                for (event_id,) in rows:
                    if event_id in produced and event_id not in visible:
                        visible[event_id] = seen
            stop.wait(LATENCY_POLL_SECONDS)

    def event(i: int) -> tuple[str, bytes, bytes]:
        event_id = f"lat-{i}"
        customer = f"cust-{i % 300:04d}"
        body = {
            "specversion": "1.0", "id": event_id, "source": source, "type": "api.request", "subject": customer,
            "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "data": {"method": "GET", "path": "/v1/items"},
        }  # fmt: skip
        return event_id, customer.encode(), orjson.dumps(body)

    async def wait_visible(ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.check_alive()
            with lock:
                if all(i in visible for i in ids):
                    return
            await asyncio.sleep(0.05)

    poller = threading.Thread(target=poll, name="bench-latency-poll", daemon=True)
    poller.start()
    try:
        async with UsageProducer(bootstrap, linger_ms=5) as producer:
            # Warm-up: the worker has joined its group and landed a flush before we measure.
            warm = [event(-1 - p) for p in range(8)]
            for event_id, key, value in warm:
                with lock:
                    produced[event_id] = time.time()
                await producer.send(topic, value, key=key)
            await producer.flush()
            await wait_visible([w[0] for w in warm], 90.0)
            with lock:
                if not all(w[0] in visible for w in warm):
                    raise BenchError(f"latency warm-up events never became visible; see {worker.log_path}")
                produced.clear()
                visible.clear()
            # Steady rate: every 10 ms, send what the schedule says is due by now.
            started = time.monotonic()
            sent = 0
            total = int(rate * seconds)
            while sent < total:
                due = min(total, int((time.monotonic() - started) * rate) + 1)
                while sent < due:
                    event_id, key, value = event(sent)
                    with lock:
                        produced[event_id] = time.time()
                    await producer.send(topic, value, key=key)
                    sent += 1
                await asyncio.sleep(0.01)
            produce_seconds = time.monotonic() - started
            await producer.flush()
        await wait_visible(list(produced), 60.0)
    finally:
        stop.set()
        poller.join(5)
    with lock:
        delays = sorted(visible[i] - produced[i] for i in produced if i in visible)
        missing = sum(1 for i in produced if i not in visible)
    return {
        "target_rate_per_s": round(rate),
        "achieved_rate_per_s": round(len(produced) / max(produce_seconds, 1e-6)),
        "seconds": round(produce_seconds, 2),
        "events": len(produced),
        "seen": len(delays),
        "missing": missing,
        "p50_s": round(_percentile(delays, 0.50), 3),
        "p99_s": round(_percentile(delays, 0.99), 3),
        "max_s": round(delays[-1], 3) if delays else None,
        "poll_errors": len(poll_errors),
        "poll_round_trip_ms_p50": round(1000 * _percentile(sorted(round_trips), 0.50), 1),
        "poll_round_trip_ms_p99": round(1000 * _percentile(sorted(round_trips), 0.99), 1),
    }


def _peak_rss(bench: _Bench, distinct_ids: int, timeout: float) -> tuple[dict, dict]:
    prefix, group = bench.names("rss")
    topic = bench.create_topics(prefix)
    records, events = _distinct_id_records(distinct_ids)
    _say(f"rss: publishing {distinct_ids:,} distinct ids in {len(records):,} records")
    ends = bench.publish(topic, records)
    worker = bench.start_worker("rss", prefix, group)
    try:
        stats = {"distinct_ids": distinct_ids}
        caught_up = bench.wait_caught_up(worker, ends, timeout)
        start = worker.consumption_started()
        if start is not None:
            stats["ingest_events_per_s"] = round(distinct_ids / max(caught_up - start, 1e-6))
        # Then repeats of the first tenth: lookups against a store holding every id.
        repeats = records[: max(1, len(records) // 10)]
        ends = bench.publish(topic, repeats)
        bench.wait_caught_up(worker, ends, timeout)
        status = worker.status_kb()
        stats["repeats_sent"] = sum(r.events for r in repeats)
        stats["vmhwm_mb"] = round(status["VmHWM"] / 1024, 1)
        stats["vmrss_mb"] = round(status["VmRSS"] / 1024, 1)
        # RssFile is mostly chdb's shared library (clean, shared pages), RssAnon the heap.
        stats["rss_anon_mb"] = round(status.get("RssAnon", 0) / 1024, 1)
        stats["rss_file_mb"] = round(status.get("RssFile", 0) / 1024, 1)
        client = worker.reader()
        flushes, max_records, max_events = client.query(
            "SELECT uniqExact(written_at), max(r), max(e) FROM (SELECT written_at, sum(records) AS r,"
            " sum(events_accepted + duplicates + dead_lettered) AS e FROM ingest_progress GROUP BY written_at)"
        ).result_rows[0]
        stats["flushes"] = int(flushes)
        stats["max_flush_records"] = int(max_records)
        stats["max_flush_events"] = int(max_events)
        workload = Workload(records, events, stats["repeats_sent"], 0, 0)
        exactness = _exactness(client, workload)
        return stats, exactness
    finally:
        bench.processes.stop(worker.process)


# -- machine ---------------------------------------------------------------------------------


def machine_info() -> dict:
    info: dict = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "ram_gb": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    from importlib.metadata import PackageNotFoundError, version

    for package in ("faust-streaming", "aiokafka", "chdb", "clickhouse-connect"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    return info


# -- the benchmark ---------------------------------------------------------------------------


def run_bench(options: BenchOptions) -> dict:
    """Run every phase on a fresh embedded stack; returns the figures (see :func:`render`)."""
    started = time.monotonic()
    temporary = options.data_dir is None
    root = Path(tempfile.mkdtemp(prefix="bastionary-bench-")) if temporary else Path(options.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    processes = _Processes()
    result: dict = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}}
    result["machine"] = machine_info()
    try:
        with _sigterm_as_interrupt():
            broker = EmbeddedBroker(root / "broker")
            try:
                broker.start()
                result.update(_run_phases(_Bench(root, processes, broker), options))
            finally:
                processes.stop_all()
                broker.stop()
    finally:
        processes.stop_all()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _run_phases(bench: _Bench, options: BenchOptions) -> dict:
    out: dict = {}
    timeout = max(300.0, options.events / 200)
    cpu = bench.cpu

    _say(f"generating {options.events:,} events (10% repeats) as single-event records")
    workload = generate(options.events, single_only=True)
    singles = workload.records
    prefix, group = bench.names("single")
    topic = bench.create_topics(prefix)
    _say(f"publishing {len(singles):,} records to {topic}")
    ends = bench.publish(topic, singles)

    _say("(a) bare Faust ceiling")
    with cpu.phase("bare"):
        out["bare"] = _bare_ceiling(bench, topic, len(singles), timeout)
    _say(f"    {out['bare']['records_per_s']:,} records/s")

    _say("(b) pipeline, single-event records")
    with cpu.phase("single"):
        single, single_exact = _throughput(bench, "single", prefix, group, singles, ends, workload, timeout)
    single["ratio_to_bare"] = round(single["records_per_s"] / max(out["bare"]["records_per_s"], 1), 3)
    out["single"] = single
    _say(f"    {single['records_per_s']:,} records/s ({single['ratio_to_bare']}x bare)")

    _say(f"(b) pipeline, {BATCH_EVENTS}-event batch records")
    batches = _batched(singles, BATCH_EVENTS)
    prefix, group = bench.names("batch")
    topic = bench.create_topics(prefix)
    ends = bench.publish(topic, batches)
    with cpu.phase("batch"):
        batch, batch_exact = _throughput(bench, "batch", prefix, group, batches, ends, workload, timeout)
    out["batch"] = batch
    _say(f"    {batch['events_per_s']:,} events/s")
    del workload, singles, batches

    rate = max(20.0, min(out["single"]["records_per_s"] / 2, 50_000.0))
    _say(f"(c) end-to-end latency at {rate:,.0f} events/s for {options.latency_seconds:g} s")
    with cpu.phase("latency"):
        out["latency"] = _latency(bench, rate, options.latency_seconds)
    _say(f"    p50 {out['latency']['p50_s']} s, p99 {out['latency']['p99_s']} s")

    _say(f"(d) worker peak RSS with {options.dedupe_ids:,} distinct ids")
    with cpu.phase("rss"):
        out["rss"], rss_exact = _peak_rss(bench, options.dedupe_ids, max(300.0, options.dedupe_ids / 200))
    _say(f"    VmHWM {out['rss']['vmhwm_mb']} MB")

    runs = {"single": single_exact, "batch": batch_exact, "rss": rss_exact}
    out["exact"] = all(r["exact"] for r in runs.values())
    out["mismatches"] = {name: sum(r["mismatches"].values()) for name, r in runs.items()}
    out["exactness"] = runs
    out["targets"] = _verdicts(out, options)
    out["contention"] = cpu.phases
    return out


def _verdicts(out: dict, options: BenchOptions) -> dict:
    return {
        "single_ratio": {
            "target": f">= {TARGET_SINGLE_RATIO}x bare",
            "pass": out["single"]["ratio_to_bare"] >= TARGET_SINGLE_RATIO,
        },
        "batch_events_per_s": {
            "target": f">= {TARGET_BATCH_EVENTS_PER_S:,} events/s",
            "pass": out["batch"]["events_per_s"] >= TARGET_BATCH_EVENTS_PER_S,
        },
        "latency_p99_s": {
            "target": f"<= {TARGET_P99_S:g} s",
            "pass": out["latency"]["missing"] == 0 and out["latency"]["p99_s"] <= TARGET_P99_S,
        },
        "rss_mb": {
            "target": f"<= {TARGET_RSS_MB} MB with {TARGET_RSS_IDS:,} ids",
            # Only a run with at least the target's ids can meet it.
            "pass": out["rss"]["vmhwm_mb"] <= TARGET_RSS_MB and options.dedupe_ids >= TARGET_RSS_IDS,
        },
        "exact": {"target": "true", "pass": out["exact"]},
    }


# -- output ----------------------------------------------------------------------------------


def render(result: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2, default=str)
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=False)
    targets = result.get("targets", {})

    def verdict(name: str) -> str:
        if name not in targets:
            return ""
        return "PASS" if targets[name]["pass"] else "FAIL"

    bare, single, batch = result["bare"], result["single"], result["batch"]
    latency, rss = result["latency"], result["rss"]
    table = Table(title="bastionary bench", title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("target")
    table.add_column("", justify="center")
    table.add_row(
        "bare Faust ceiling (count only)",
        f"{bare['records_per_s']:,} records/s",
        f"({bare['records']:,} records in {bare['seconds']:.1f} s)",
        "",
    )
    table.add_row(
        "pipeline, single-event records",
        f"{single['records_per_s']:,} records/s\n= {single['ratio_to_bare']:.2f}x bare",
        f">= {TARGET_SINGLE_RATIO}x bare = {round(TARGET_SINGLE_RATIO * bare['records_per_s']):,} records/s",
        verdict("single_ratio"),
    )
    table.add_row(
        f"pipeline, {BATCH_EVENTS}-event batch records",
        f"{batch['events_per_s']:,} events/s\n({batch['records_per_s']:,} records/s)",
        f">= {TARGET_BATCH_EVENTS_PER_S:,} events/s per worker",
        verdict("batch_events_per_s"),
    )
    missing = f", {latency['missing']} never seen" if latency["missing"] else ""
    table.add_row(
        "end-to-end latency p50 / p99",
        f"{latency['p50_s']:.3f} s / {latency['p99_s']:.3f} s",
        f"p99 <= {TARGET_P99_S:g} s (at {latency['target_rate_per_s']:,} events/s{missing})",
        verdict("latency_p99_s"),
    )
    table.add_row(
        "worker peak RSS (VmHWM)",
        f"{rss['vmhwm_mb']:,.0f} MB\nwith {rss['distinct_ids']:,} ids",
        f"<= {TARGET_RSS_MB} MB with {TARGET_RSS_IDS:,} distinct ids",
        verdict("rss_mb"),
    )
    mismatches = ", ".join(f"{k} {v}" for k, v in result["mismatches"].items())
    table.add_row(
        "exact totals vs ground truth",
        str(result["exact"]).lower(),
        f"true (mismatched keys: {mismatches})",
        verdict("exact"),
    )
    console.print(table)

    details = Table(title="runs", title_justify="left")
    columns = ("run", "records", "events", "ev/record", "seconds", "records/s", "events/s", "flushes", "largest flush")
    for column in columns + ("start-up",):
        details.add_column(column, justify="right" if column != "run" else "left")
    for name, run in (("single", single), ("batch", batch)):
        details.add_row(
            name, f"{run['records']:,}", f"{run['events']:,}", f"{run['events_per_record']}",
            f"{run['seconds']:.2f}", f"{run['records_per_s']:,}", f"{run['events_per_s']:,}",
            str(run["flushes"]), f"{run['max_flush_events']:,} ev", f"{run['startup_s']:.1f} s",
        )  # fmt: skip
    console.print(details)
    console.print(f"timing: {single['timing']}; start-up (process, chdb, group join) excluded")
    console.print(
        f"latency: {latency['events']:,} events over {latency['seconds']:.1f} s"
        f" ({latency['achieved_rate_per_s']:,}/s), max {latency['max_s']} s;"
        f" gateway polled every {LATENCY_POLL_SECONDS * 1000:.0f} ms"
        f" (round trip p50 {latency.get('poll_round_trip_ms_p50')} ms, p99 {latency.get('poll_round_trip_ms_p99')} ms)"
    )
    extra = f", ingest {rss['ingest_events_per_s']:,} events/s" if "ingest_events_per_s" in rss else ""
    console.print(
        f"rss: at the end (after {rss['repeats_sent']:,} repeats) VmRSS {rss['vmrss_mb']:,.0f} MB ="
        f" {rss['rss_anon_mb']:,.0f} MB anonymous + {rss['rss_file_mb']:,.0f} MB file-backed (chdb's library);"
        f" {rss['flushes']} flushes, the largest {rss['max_flush_events']:,} events{extra}"
    )

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
                f" {', '.join(noisy)}: those figures understate the pipeline; rerun on a quiet machine."
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
    quick = " (quick sizes)" if result["options"].get("quick") else ""
    info.add_row("elapsed", f"{result.get('elapsed_s', 0):.0f} s{quick}")
    console.print(info)
    return console.file.getvalue().rstrip()
