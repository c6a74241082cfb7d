"""A bare Faust app with one agent that only counts records: the Faust ceiling for ``bench``.

It is Faust wiring, so it lives with the worker. It consumes a topic with the same consumer
settings as the usage worker (see :mod:`bastionary.worker.app`) but does nothing with the
records, so the rate it reaches is the most a single Faust process can deliver on this
machine and broker. Run it as::

    python -m bastionary.worker.bare_agent --bootstrap HOST:PORT --topic T --group G \
        --expect N --report /path/result.json [--event-loop uvloop|asyncio]

When it has counted ``expect`` records it writes ``{"count", "first", "last"}`` (wall-clock
seconds of the first and last record counted) to ``--report`` (atomically) and prints the
same JSON line on stdout; it then keeps running until it is stopped (SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faust

from bastionary.eventloop import EVENT_LOOPS, use_event_loop
from bastionary.worker.app import broker_url


@dataclass
class _Tally:
    count: int = 0
    first: float = 0.0  # wall-clock seconds of the first record counted
    last: float = 0.0
    reported: bool = False


def create_bare_app(
    bootstrap: str, topic: str, group: str, expect: int, report: Path, data_dir: Path, partitions: int = 4
) -> faust.App:
    app = faust.App(
        group,
        broker=broker_url(bootstrap),
        autodiscover=False,
        datadir=str(data_dir),
        store="memory://",
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=3.0,
        broker_heartbeat_interval=0.6,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=16384,
        web_enabled=False,
    )
    source = app.topic(
        topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=partitions
    )
    tally = _Tally()

    @app.agent(source, name="bare-count")
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for _event in stream.events():
            now = time.time()
            if tally.count == 0:
                tally.first = now
            tally.count += 1
            tally.last = now
            if tally.count >= expect and not tally.reported:
                tally.reported = True
                write_report(report, {"count": tally.count, "first": tally.first, "last": tally.last})

    return app


def write_report(path: Path, result: dict[str, float]) -> None:
    """Write ``result`` as one JSON line, atomically, and print it (the bench reads either)."""
    line = json.dumps(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(line)
    os.replace(tmp, path)
    print(line, flush=True)  # noqa: T201 - the bench reads this line from stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="uvloop", help="as the worker's setting")
    args = parser.parse_args(argv)
    use_event_loop(args.event_loop)
    data_dir = args.data_dir or args.report.parent / "bare-faust"
    data_dir.mkdir(parents=True, exist_ok=True)
    app = create_bare_app(args.bootstrap, args.topic, args.group, args.expect, args.report, data_dir, args.partitions)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
    worker.spinner = None  # its escape codes would land in the log
    sys.argv = sys.argv[:1]  # the Faust worker must not see our options
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
