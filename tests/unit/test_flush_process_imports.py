"""A flush process holds what its engine is made of and nothing of the worker: no Kafka
client, no settings, no CLI, and no multiprocessing resource tracker beside it. Each of
those is memory counted in the worker's RSS (about 13 MB a child, 12 MB the tracker)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from bastionary.catalog import load_catalog
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.flush_process import FlushProcess, FlushProcessSpec
from bastionary.tools.bench.processes import descendants
from bastionary.worker.engine_parts import EngineParts, OpenInFlushProcess
from tests.unit.test_flush_process import spec as journaled_spec

WORKER_ONLY = ("aiokafka", "faust", "mode", "click", "bastionary.settings", "bastionary.runtime", "bastionary.cli")


def test_the_child_unpickles_its_spec_without_importing_the_worker(tmp_path: Path) -> None:
    parts = EngineParts(
        load_catalog(None).meters,
        RecordLimits(1 << 20, 100, timedelta(minutes=5)),
        tmp_path / "dedupe",
        timedelta(days=35),
        0,
        "WARNING",
        "json",
    )
    spec = FlushProcessSpec(OpenInFlushProcess(parts, "http://127.0.0.1:1", None, "lz4"))
    # What the child runs before it opens anything (flush_process._CHILD_MAIN): its module,
    # then the spec.
    code = (
        "import pickle, sys\n"
        "import bastionary.metering.flush_process\n"
        "pickle.loads(sys.stdin.buffer.read())\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(spec), capture_output=True, check=True, timeout=60
    )
    modules = set(child.stdout.decode().split())
    assert "bastionary.worker.engine_parts" in modules
    assert sorted(m for m in modules if any(m == name or m.startswith(f"{name}.") for name in WORKER_ONLY)) == []


def test_a_flush_process_is_the_one_process_it_starts(tmp_path: Path) -> None:
    before = set(descendants(os.getpid()))
    process = FlushProcess(journaled_spec(tmp_path))
    try:
        assert set(descendants(os.getpid())) - before == {process.pid}
        command = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"multiprocessing.spawn" not in command
    finally:
        process.close()
