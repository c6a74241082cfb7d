"""A worker's output is for machines when no terminal reads it: JSON lines and nothing else."""

from __future__ import annotations

import json

import pytest

from . import hostile
from .test_trust import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("examine_processes", "event_loop"),
    [("0", "uvloop"), ("1", "asyncio")],
    ids=["examined-in-worker-on-uvloop", "examined-in-child-on-asyncio"],
)
def test_a_worker_off_a_terminal_writes_json_lines_only(stack, examine_processes, event_loop):
    # auto: not a terminal (the output goes to a file), so JSON. DEBUG lets Faust and aiokafka
    # speak too; bad records make warnings; the stop makes shutdown messages. A child that
    # examines records writes to the same stderr, the same way. Each event loop the setting
    # offers runs a whole worker here, and the worker says which one it runs on.
    stack.start_worker(
        "w1",
        BASTIONARY_LOG_FORMAT="auto",
        BASTIONARY_LOG_LEVEL="DEBUG",
        BASTIONARY_MAX_BATCH_EVENTS="20",
        BASTIONARY_EXAMINE_PROCESSES=examine_processes,
        BASTIONARY_EVENT_LOOP=event_loop,
    )
    records = hostile.catalogue("out")
    hostile.publish(stack.bootstrap, stack.usage_topic, records)
    wanted = sum(r.events for r in records)
    wait_until(lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == wanted, what="landed")
    stack.kill_worker("w1", 15)

    output = (stack.tmp_path / "w1.log").read_bytes()
    assert b"\x1b" not in output and b"\x08" not in output  # no terminal escapes, no spinner
    lines = output.decode().splitlines()
    assert len(lines) > 10
    levels = set()
    loops = []
    for number, line in enumerate(lines, 1):
        entry = json.loads(line)  # every line, stdlib loggers included
        assert isinstance(entry, dict) and entry["event"] is not None, (number, line)
        levels.add(entry["level"])
        if entry["event"] == "event loop running":
            loops.append(entry["event_loop"])
    assert {"info", "debug"} <= levels
    assert loops == [event_loop]
