"""The embedded stack as the phases use it: topics, publishing, and worker subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from bastionary.devstack.broker import EmbeddedBroker, free_port
from bastionary.settings import Settings
from bastionary.storage.client import Client
from bastionary.tools.bench.options import (
    PARTITIONS,
    SESSION_TIMEOUT,
    BenchError,
    asks_flush_process,
    without_flush_process,
)
from bastionary.tools.bench.processes import (
    _bastionary_command,
    _CpuMeter,
    _Processes,
    _tail,
    descendants,
    environment_without_settings,
)
from bastionary.tools.workload import Record
from bastionary.topics import Topics


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    topic: str
    group: str
    started_at: float
    profiler: subprocess.Popen[bytes] | None = None
    clickhouse_server: subprocess.Popen[bytes] | None = None  # started for this worker alone
    web_port: int = 0  # its HTTP port: /metrics, checks

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"worker exited with {self.process.returncode}; last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def reader(self, timeout: float = 90.0) -> Client:
        """A clickhouse-connect client on the worker's query gateway, as the reader."""
        import clickhouse_connect

        from bastionary.devstack.discovery import gateway_dsn, gateway_file, read_gateway_file

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
                if (
                    entry.get("event") in ("partition starts fresh", "partition recovered")
                    and entry.get("topic") == self.topic
                ):
                    stamp = datetime.fromisoformat(str(entry["timestamp"])).timestamp()
                    first = stamp if first is None else min(first, stamp)
        return first

    def status_kb(self) -> dict[str, int]:
        return _status_kb(self.process.pid)

    def children_status_kb(self) -> list[dict[str, int]]:
        """The same figures for each process the worker started (flush processes,
        ``EXAMINE_PROCESSES`` and their multiprocessing resource tracker): their memory is the
        worker's too."""
        found = []
        for pid in descendants(self.process.pid):
            with contextlib.suppress(OSError):  # exited since it was listed
                found.append(_status_kb(pid))
        return found


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


class _Bench:
    def __init__(
        self,
        root: Path,
        processes: _Processes,
        broker: EmbeddedBroker,
        profile_dir: Path | None = None,
        worker_settings: Mapping[str, str] | None = None,
        clickhouse_server: bool = False,
    ):
        self.root = root
        # Each measured worker writes to a ClickHouse server of its own over HTTP
        # (``serve-clickhouse``), the production shape, instead of holding chdb itself.
        self.clickhouse_server = clickhouse_server
        self.processes = processes
        self.broker = broker
        self.profile_dir = profile_dir
        # The operator's settings for the measured workers (``--worker-setting``), as
        # BASTIONARY_* variables; the bench's own (below) win over them.
        self.worker_settings = dict(worker_settings or {})
        self.tag = uuid.uuid4().hex[:8]
        self.cpu = _CpuMeter(processes, broker)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def event_loop(self) -> str:
        """The measured workers' event loop; the bare Faust agent and the references run on it
        too, so that each ratio compares like with like."""
        default: str = Settings.model_fields["event_loop"].default
        return self.worker_settings.get("BASTIONARY_EVENT_LOOP", default)

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

    def start_clickhouse_server(self, phase: str, timeout: float = 90.0) -> tuple[str, subprocess.Popen[bytes]]:
        """``bastionary serve-clickhouse`` on the phase's data dir, as a ClickHouse server the
        worker reaches over HTTP only (the production shape): its writer DSN and process."""
        from bastionary.devstack.discovery import gateway_dsn, gateway_file, read_gateway_file

        data_dir = self.root / phase
        data_dir.mkdir(parents=True, exist_ok=True)
        env = environment_without_settings() | {
            "BASTIONARY_DATA_DIR": str(data_dir),
            "BASTIONARY_LOG_FORMAT": "json",
        }
        log_path = self.root / "logs" / f"clickhouse-{phase}.log"
        process = self.processes.spawn(_bastionary_command() + ["serve-clickhouse"], env, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"serve-clickhouse exited with {process.returncode}:\n{_tail(log_path)}")
            info = read_gateway_file(gateway_file(data_dir))
            if info:
                return gateway_dsn(info, "writer"), process
            time.sleep(0.1)
        raise BenchError(f"serve-clickhouse did not come up in {timeout:.0f}s; see {log_path}")

    def start_worker(
        self, phase: str, prefix: str, group: str, clickhouse_dsn: str | None = None, embedded: bool = False
    ) -> _Worker:
        """A worker writing to ``clickhouse_dsn`` over HTTP, or else to a server of its own
        (``--clickhouse-server``), or else with chdb in its process (``embedded`` forces it)."""
        server = None
        if clickhouse_dsn is None and self.clickhouse_server and not embedded:
            clickhouse_dsn, server = self.start_clickhouse_server(phase)
        data_dir = self.root / phase
        data_dir.mkdir(parents=True, exist_ok=True)
        web_port = free_port()
        # Only our settings: an inherited BASTIONARY_* (a DSN, a catalog, a prefix) would
        # measure something else than the embedded defaults.
        env = (
            environment_without_settings()
            | self.worker_settings
            | {
                "BASTIONARY_KAFKA_BOOTSTRAP": self.bootstrap,
                "BASTIONARY_DATA_DIR": str(data_dir),
                "BASTIONARY_TOPIC_PREFIX": prefix,
                "BASTIONARY_CONSUMER_GROUP": group,
                "BASTIONARY_WORKER_ID": f"bench-{phase}",
                "BASTIONARY_WEB_PORT": str(web_port),
                "BASTIONARY_KAFKA_SESSION_TIMEOUT": SESSION_TIMEOUT,
                "BASTIONARY_LOG_FORMAT": "json",
            }
        )
        if clickhouse_dsn is not None:
            env["BASTIONARY_CLICKHOUSE_DSN"] = clickhouse_dsn
        elif self.flush_process:
            env = without_flush_process(env)  # chdb in the worker
        log_path = self.root / "logs" / f"worker-{phase}.log"
        process = self.processes.spawn(_bastionary_command() + ["worker"], env, log_path)
        worker = _Worker(process, data_dir, log_path, Topics(prefix).usage_events, group, time.time())
        worker.clickhouse_server = server
        worker.web_port = web_port
        if self.profile_dir is not None:
            worker.profiler = self._profile(process.pid, phase, self.profile_dir)
        return worker

    def _profile(self, pid: int, phase: str, profile_dir: Path) -> subprocess.Popen[bytes]:
        """py-spy on the worker until it exits; it writes the profile then (see stop_worker)."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy; `make venv` installs it)")
        profile_dir.mkdir(parents=True, exist_ok=True)
        output = profile_dir / f"worker-{phase}.speedscope.json"
        command = [py_spy, "record", "--pid", str(pid), "--format", "speedscope", "--output", str(output)]
        # --subprocesses: a flush process or an examine pool does the worker's work there.
        command += ["--rate", "100", "--nonblocking", "--threads", "--subprocesses"]
        with (self.root / "logs" / f"py-spy-{phase}.log").open("ab") as log:
            # Not one of the bench's children to stop: py-spy writes its profile once the worker exits.
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def flush_process(self) -> bool:
        """Whether the measured workers were asked for a flush process (``--worker-setting``)."""
        return asks_flush_process(self.worker_settings)

    def stop_worker(self, worker: _Worker) -> None:
        self.processes.stop(worker.process)
        if worker.clickhouse_server is not None:
            self.processes.stop(worker.clickhouse_server)
        if worker.profiler is not None:
            try:
                worker.profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.profiler.kill()

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
            committed: dict[TopicPartition, int] = {}
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
                committed.update({tp: v for tp, v in zip(pending, values, strict=False) if v is not None})
                if all(committed.get(tp, -1) >= end for tp, end in wanted.items()):
                    return seen
                await asyncio.sleep(0.05)
            raise BenchError(f"worker not caught up after {timeout:.0f}s: wanted {ends}, committed {committed}")
        finally:
            await consumer.stop()
