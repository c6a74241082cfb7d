"""The children the benchmark starts, the CPU they (and others) use, and signals."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from bastionary.devstack.broker import EmbeddedBroker
from bastionary.devstack.processes import PREEXEC, stop_process

# -- processes -------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment_without_settings() -> dict[str, str]:
    """This process's environment without its BASTIONARY_* variables: a child of the bench runs
    on the settings the bench gives it, not on a DSN, catalog or prefix the caller happens to have."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")}


def _bastionary_command() -> list[str]:
    script = Path(sys.executable).parent / "bastionary"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bastionary.cli.main"]


class _Processes:
    """Every child the benchmark starts; all of them are stopped on the way out, whatever happens."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def spawn(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # SIGTERM when the benchmark dies, even by SIGKILL (Linux).
                preexec_fn=PREEXEC,
            )
        self._children.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        stop_process(process, timeout)
        with contextlib.suppress(ValueError):
            self._children.remove(process)

    def stop_all(self) -> None:
        for process in list(self._children):
            with contextlib.suppress(Exception):
                self.stop(process)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds_of(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (OSError once it is gone)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / _TICK  # utime, stime


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:  # gone, or a kernel without /proc/<pid>/task/<tid>/children
        return found
    for child in children:
        found.append(child)
        found.extend(descendants(child))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy, all cores (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    busy = sum(values[:8]) - idle  # guest time is already inside user
    return busy / _TICK


class BusySampler:
    """How busy the machine was over a span known only afterwards.

    A throughput run's timed span starts at a mark in the worker's log, after its start-up, so
    :class:`_CpuMeter`'s phase share (start-up and teardown included) cannot say whether the
    span itself was held back by the cores or by waiting. A thread samples ``/proc/stat``
    every ``interval`` seconds while the run lasts; :meth:`share` reads the span off the samples.

    ``parts`` (optional) gives each part of the run's CPU seconds so far (the worker, its flush
    processes, the ClickHouse server, the broker: see :class:`PartsCpu`), sampled with the
    machine, so :meth:`part_shares` says which of them held the cores over the same span.
    """

    def __init__(
        self,
        interval: float = 0.1,
        busy: Callable[[], float] | None = None,
        cores: int | None = None,
        parts: Callable[[], dict[str, float]] | None = None,
    ):
        self.interval = interval
        self._busy = busy or machine_busy_seconds
        self._parts = parts
        self.part_samples: list[tuple[float, dict[str, float]]] = []  # (time.time(), CPU seconds by part)
        self._cores = cores or (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
        self.samples: list[tuple[float, float]] = []  # (time.time(), busy seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-busy-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # no /proc: no samples, and share() says None
                self.samples.append((time.time(), self._busy()))
            if self._parts is not None:
                with contextlib.suppress(OSError):
                    self.part_samples.append((time.time(), self._parts()))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def share(self, start: float, end: float) -> float | None:
        """The share of all cores busy between the first and last samples inside [start, end]
        (None if fewer than two fell there)."""
        inside = [sample for sample in self.samples if start <= sample[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (first_at, first_busy), (last_at, last_busy) = inside[0], inside[-1]
        return round((last_busy - first_busy) / ((last_at - first_at) * self._cores), 3)

    def part_shares(self, start: float, end: float) -> dict[str, float] | None:
        """Each part's CPU between the first and last part samples inside [start, end], as a
        share of one core (a part busy on both cores counts 2.0); None if fewer than two fell
        there. A part absent from the first sample (not started yet) counts from zero."""
        inside = [sample for sample in self.part_samples if start <= sample[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (first_at, first), (last_at, last) = inside[0], inside[-1]
        span = last_at - first_at
        return {part: round(max(0.0, seconds - first.get(part, 0.0)) / span, 3) for part, seconds in last.items()}


class PartsCpu:
    """The CPU seconds so far of each part of a throughput run, by ``/proc/<pid>/stat``: the
    worker's own process, its descendants (flush processes, examine processes and their
    resource tracker), its ClickHouse server (``--clickhouse-server``) and the broker. The
    worker and its server start inside the sampled span, so they are set once known; a part
    not running is absent."""

    def __init__(self, broker_pid: int | None):
        self.broker_pid = broker_pid
        self.worker_pid: int | None = None
        self.server_pid: int | None = None

    def __call__(self) -> dict[str, float]:
        parts: dict[str, float] = {}
        if self.worker_pid is not None:
            parts["worker"] = _cpu_or_zero(self.worker_pid)
            parts["worker_children"] = sum(_cpu_or_zero(pid) for pid in descendants(self.worker_pid))
        if self.server_pid is not None:
            parts["clickhouse_server"] = _cpu_or_zero(self.server_pid) + sum(
                _cpu_or_zero(pid) for pid in descendants(self.server_pid)
            )
        if self.broker_pid is not None:
            parts["broker"] = _cpu_or_zero(self.broker_pid)
        return parts


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds_of(pid)
    except (OSError, ValueError, IndexError):  # exited since it was listed
        return 0.0


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
        self.phases: dict[str, dict[str, float]] = {}
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def _ours(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        live: list[subprocess.Popen[bytes]] = list(self.processes._children)
        # With their descendants: a worker's examining children start at its first flush,
        # inside a phase, and their CPU is the pipeline's, not another process's.
        pids = [process.pid for process in live]
        if self.broker.pid is not None:
            pids.append(self.broker.pid)
        pids += [child for pid in pids for child in descendants(pid)]
        return total + sum(_cpu_or_zero(pid) for pid in pids)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        try:
            wall, busy, ours = time.monotonic(), machine_busy_seconds(), self._ours()
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
                others = max(0.0, machine_busy_seconds() - busy - mine)
                self.phases[name] = {
                    "seconds": round(seconds, 1),
                    "bench_cpu_share": round(mine / capacity, 3),
                    "others_cpu_share": round(others / capacity, 3),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks stop the children."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def bench_directory(prefix: str, given: Path | None = None) -> Iterator[Path]:
    """The bench's working directory: ``given`` (kept as it is), or a temporary one.

    A temporary one is removed when the bench ends, except its ``logs``: a bench that fails
    names a log there for the reader to open, so on any exception everything else goes and
    the logs stay, and the path is printed.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix)) if given is None else Path(given)
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    except BaseException:
        if given is None:
            remove_all_but_logs(root)
            if (root / "logs").is_dir():
                _say(f"the bench did not finish; its logs are kept in {root / 'logs'}")
        raise
    if given is None:
        shutil.rmtree(root, ignore_errors=True)


def remove_all_but_logs(root: Path) -> None:
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name == "logs":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
