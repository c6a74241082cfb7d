"""chdb hands the blocks a failed query had streamed to its connection's next query: the
worker's own client (``open_client`` on a chdb DSN) answers that query right all the same."""

from __future__ import annotations

import subprocess
import sys

# In a child process: chdb holds one data directory per process, for the process's life.
PROGRAM = """
import os, tempfile
from bastionary.storage.client import open_client
client = open_client(f"chdb://{tempfile.mkdtemp()}", "bastionary", create=True)
try:
    client.query("SELECT number FROM numbers(10) WHERE throwIf(number = 5) = 0 SETTINGS max_block_size = 1")
except Exception as exc:
    print("failed", type(exc).__name__)
print(client.query("SELECT number FROM numbers(100, 3)").result_rows)
print(client.query("SELECT currentDatabase()").result_rows)
for _ in range(50):  # a call failing at every run of a long-lived worker
    try:
        client.query("SELECT throwIf(1)")
    except Exception:
        pass
print(len(client._retired), client.query("SELECT 7").result_rows)
client.close()
os._exit(0)
"""


def test_a_query_after_one_that_failed_midway_gets_its_own_rows_only():
    finished = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("failed ")
    # Before 2026-12-08: [(0,), (1,), (100,), (101,), (102,)], the failed query's rows first.
    assert lines[1:3] == ["[(100,), (101,), (102,)]", "[('bastionary',)]"]
    assert lines[3] == "0 [(7,)]"  # each failed connection closed, none kept open
