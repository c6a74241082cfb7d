"""A flush planned and written in a process of the worker's own (``BASTIONARY_FLUSH_PROCESS``).

In the worker, a flush's planning (parse, validate, dedupe verdicts, rollups) and its
inserts hold the interpreter that the event loop needs for heartbeats, entitlement checks
and HTTP. Here they run in a child that owns the dedupe cache (RocksDB) and a ClickHouse
client of its own; the worker keeps the consumer, the buffers, the log checks and the order
of a flush's steps (:meth:`bastionary.metering.sink.UsageSink._land`). A record crosses to
the child once, its bytes; what comes back is what the sink needs of a plan: its range,
stats, dead letters and the rollup rows the worker asked for, never its event rows.

Each call is one step, and answered only once the child has finished it. So if the child
dies, the step it was in either landed or did not, exactly as if the worker had died there:
the call raises :class:`FlushProcessDied`, the flush fails, the worker stops (as after any
failed flush) and its restart replays the flush from its marker. The child never outlives
the worker: it ends when the worker's end of the pipe closes, and ignores SIGINT and SIGTERM
(its worker decides when it stops).

What the child opens is the worker's to say (:mod:`bastionary.worker.flushing`); ClickHouse
must then be outside the worker's process, since chdb admits one process per data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import structlog

from bastionary.gc_generations import FULL, FULL_EVERY_SECONDS, YOUNG, collect_every
from bastionary.logs import configure_logging
from bastionary.malloc_arenas import limit_malloc_arenas
from bastionary.metering.landing import LocalFlushEngine, PlanRequest
from bastionary.metering.planning import FlushPlan
from bastionary.metering.ports import FlushMarker, MarkerRow

log = structlog.get_logger(__name__)


class FlushProcessDied(RuntimeError):
    """The flush process ended; the step it was in may or may not have landed."""


class FlushProcessFailed(RuntimeError):
    """A step raised in the flush process (its traceback is in the message and its log)."""


@dataclass(frozen=True)
class FlushProcessSpec:
    """Sent to the child once, at start."""

    # Opens the engine in the child: its storage and dedupe cache are the child's alone. A
    # module-level callable or a picklable object (see bastionary.worker.engine_parts), of a
    # module the child can import by name: the child never runs the worker's __main__.
    open_engine: Callable[[], LocalFlushEngine]
    log_level: str = "INFO"
    log_format: str = "auto"


class FlushProcess:
    """The :class:`~bastionary.metering.landing.FlushEngine` of a worker whose flushes run in
    a child process. Calls are serialized: the child does one step at a time."""

    def __init__(self, spec: FlushProcessSpec):
        # A new interpreter (never a fork: the worker runs threads and an event loop), started
        # here rather than by multiprocessing's spawn, which re-imports the worker's main module
        # (the whole CLI: settings, aiokafka, click) into the child and starts a resource
        # tracker process beside it. Those were about 13 MB and 12 MB of the worker's summed
        # RSS; this child imports what its engine is made of and nothing else.
        ours, theirs = socket.socketpair()
        self._conn = Connection(ours.detach())
        try:
            self._process = subprocess.Popen(
                [sys.executable, *_interpreter_flags(), "-c", _CHILD_MAIN, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # The worker's own streams: the child's log lines are the worker's.
                stdout=None,
                stderr=None,
            )
        except BaseException:
            self._conn.close()
            raise
        finally:
            theirs.close()
        self._lock = threading.Lock()
        try:
            # The worker's import path first, so the spec (and any module it names) unpickles there.
            self._conn.send(list(sys.path))
            self._conn.send(spec)
        except OSError:
            pass  # the child is already gone: the first step says so, with its exit code
        except BaseException:  # the spec does not pickle: the child ends at the pipe's EOF
            self.close()
            raise
        try:
            self._call("ready")  # the child opened its storage, or the worker fails to start here
        except BaseException:
            # Nobody else will close this one: without it, every failed start (and a worker
            # retries) left its pipe open and its child unreaped.
            self.close()
            raise
        log.info("flush process started", pid=self._process.pid)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _call(self, step: str, *args: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((step, args))
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise FlushProcessDied(
                    f"the flush process (pid {self._process.pid}) ended during {step!r}"
                    f" (exit code {self._exit_code(wait=1.0)}); the worker must restart to replay"
                ) from exc
        if status == "error":
            raise FlushProcessFailed(f"{step} failed in the flush process: {value}")
        return value

    def recover(self, topic: str, partition: int) -> FlushMarker | None:
        marker: FlushMarker | None = self._call("recover", topic, partition)
        return marker

    def plan(self, requests: list[PlanRequest], rows_wanted: frozenset[str] | None = None) -> list[FlushPlan]:
        plans: list[FlushPlan] = self._call("plan", requests, rows_wanted)
        return plans

    def insert_markers(self, rows: list[MarkerRow]) -> None:
        self._call("insert_markers", rows)

    def write(self, plans: list[FlushPlan]) -> None:
        self._call("write", [plan.token for plan in plans])

    def purge_expired(self) -> int:
        purged: int = self._call("purge_expired")
        return purged

    def close(self, timeout: float = 30.0) -> None:
        """Close the pipe (the child finishes its step and ends) and wait for it.

        A step in progress does not hold the close up: the pipe is shut down first, which ends
        the step's wait in the worker (:class:`FlushProcessDied`), and a child whose step hangs
        (ClickHouse not answering) is killed past ``timeout``. Before, the close waited for the
        step's lock, for as long as the step hung, and the stopping worker with it."""
        self._shut_down_pipe()
        with self._lock:
            self._conn.close()
        if self._exit_code(wait=timeout) is None:
            log.warning("flush process did not end; killing it", pid=self._process.pid)
            self._process.kill()
            self._process.wait()

    def _shut_down_pipe(self) -> None:
        try:
            pipe = socket.socket(fileno=os.dup(self._conn.fileno()))
        except OSError:
            return  # closed already
        # A shutdown reaches the socket under every descriptor of it, the one a step reads too.
        with pipe, contextlib.suppress(OSError):
            pipe.shutdown(socket.SHUT_RDWR)

    def _exit_code(self, wait: float) -> int | None:
        try:
            return self._process.wait(wait)
        except subprocess.TimeoutExpired:
            return None


# The child's first lines: SIGINT and SIGTERM are its worker's to act on (a Ctrl-C reaches the
# whole process group, even while the child still imports), then the worker's import path.
_CHILD_MAIN = """
import signal, sys
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_IGN)
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
sys.path[:] = conn.recv()
from bastionary.metering.flush_process import serve_worker
serve_worker(conn)
"""


def _interpreter_flags() -> list[str]:
    """The worker interpreter's flags (-B, -X ..., warnings), as multiprocessing passes them."""
    return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


def _slim(plan: FlushPlan, rows_wanted: frozenset[str] | None) -> FlushPlan:
    """What the worker needs of a plan: the rows and keys stay in the child until written.

    Of the rollup rows, only those of ``rows_wanted`` customers go back (all when None). A
    flush of the bench's batch records has nearly a rollup row per event (63,340 for 84,619
    events); sending them all took this process 0.13-0.32 s to pickle and the worker's
    interpreter 0.27-0.53 s to unpickle, per such flush, mostly to learn which customers had
    usage. Without them: 0.2 and 0.1 ms."""
    rows = plan.rollup_rows
    if rows_wanted is not None:
        rows = [row for row in rows if row.customer_id in rows_wanted]
    return dataclasses.replace(plan, records=[], event_rows=[], sightings=[], rollup_rows=rows, rows_of=rows_wanted)


class StepCollector:
    """The child's cyclic garbage collection: between flushes, not while a plan is made.

    A plan's objects (rows, readings, sightings, rollup cells, about nine net allocations per
    event) are in no cycle, and reference counting frees them all once the plan is written.
    The allocation-triggered collector walked them anyway while the plan was made: started
    every 50,000 allocations, it ran 62 times and for 491-694 ms in planning the 330,000
    events of ``bench --stages``' workload in 32 flushes (1.5-2.1 us per event, timed by gc
    callbacks), against 0.2-0.3 ms for the 32 collections after the writes here. Examined,
    planned and written to the dedupe store in one process, ten alternating runs each
    (2026-12-06): 20.34 / 23.28 us of CPU per event (least / median) before, 18.40 / 21.31 here.

    So it starts only past ``SAFETY_NET`` allocations, which a plan of the default flush size
    does not reach (4 MB of records: about 22,000 of the bench's batch events, at 191 bytes
    each): it is a net for bigger flushes and for plans that are never written. After each
    write, when nothing of the flush is alive, the young generations go, and every
    ``FULL_EVERY_SECONDS`` (:mod:`bastionary.gc_generations`) all three, so that a cycle among
    older objects is still freed within a minute (the automatic collector, started so rarely,
    seldom gets to them)."""

    SAFETY_NET = 1_000_000

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        collect: Callable[[int], object] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
        set_threshold: Callable[[int, int, int], None] = gc.set_threshold,
    ):
        self._clock, self._collect = clock, collect
        collect(FULL)
        freeze()  # imports and the engine: never garbage, never walked again
        collect_every(self.SAFETY_NET, set_threshold)
        self._next_full = clock() + FULL_EVERY_SECONDS

    def after_write(self) -> None:
        # A pause here holds up nothing but this process: the worker waits on the next step.
        now = self._clock()
        if now >= self._next_full:
            self._collect(FULL)
            self._next_full = now + FULL_EVERY_SECONDS
        else:
            self._collect(YOUNG)


class _Steps:
    def __init__(self, engine: LocalFlushEngine):
        self.engine = engine
        self.pending: dict[str, FlushPlan] = {}

    def ready(self) -> None:
        return None

    def recover(self, topic: str, partition: int) -> FlushMarker | None:
        return self.engine.recover(topic, partition)

    def plan(self, requests: list[PlanRequest], rows_wanted: frozenset[str] | None) -> list[FlushPlan]:
        self.pending.clear()  # a plan the sink dropped (a replaced log) is never written
        plans = self.engine.plan(requests)
        # A write needs the plan's rows and keys, not its records: their values (about 9 MB for
        # a 44,000-event plan) go before the write encodes its rows.
        self.pending = {plan.token: dataclasses.replace(plan, records=[]) for plan in plans}
        return [_slim(plan, rows_wanted) for plan in plans]

    def insert_markers(self, rows: list[MarkerRow]) -> None:
        self.engine.insert_markers(rows)

    def write(self, tokens: list[str]) -> None:
        plans = [self.pending.pop(token) for token in tokens]
        self.pending.clear()
        self.engine.write(plans)

    def purge_expired(self) -> int:
        return self.engine.purge_expired()


def serve_worker(conn: Connection) -> None:
    """The child, from its first message on (see ``_CHILD_MAIN``)."""
    limit_malloc_arenas()  # before RocksDB starts its threads
    try:
        spec = conn.recv()
    except EOFError:
        return  # the worker died before it sent the spec
    except Exception as exc:  # the spec names something this interpreter cannot import
        traceback.print_exc()
        conn.send(("error", f"the flush process could not read its spec: {type(exc).__name__}: {exc}"))
        return
    serve(conn, spec)


def serve(conn: Connection, spec: FlushProcessSpec) -> None:
    """The child: one step per message until the worker closes the pipe."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    configure_logging(spec.log_level, spec.log_format)
    try:
        engine = spec.open_engine()
    except Exception as exc:
        log.exception("flush process could not open its storage")
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    steps = _Steps(engine)
    collector = StepCollector()
    try:
        while True:
            try:
                step, args = conn.recv()
            except EOFError:
                break  # the worker closed the pipe, or died
            try:
                answer = ("ok", getattr(steps, step)(*args))
            except Exception as exc:
                log.exception("flush step failed", step=step)
                answer = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
            try:
                conn.send(answer)
            except OSError:
                break  # the worker is gone; its restart replays whatever this step was part of
            if step == "write":
                collector.after_write()
    finally:
        engine.close()
