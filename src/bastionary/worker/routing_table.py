"""A Faust table that only routes: its partitions say which worker owns a key, and it
never holds a value.

Why it refuses writes: a value written to a Faust table goes to its changelog topic, and a
worker restarted while a changelog held records stopped delivering dunning notices. Faust
resumes the stream partitions when the changelog is read back, a fetch parked during
recovery hands records to the agents while it seeks, and resuming flow control then drops
them from the agents' queues; the consumer's position is already past them, so they are
never processed and the committed offset cannot pass the gap (faust-streaming #596). The
entitlements routing table took copies of every state read until 2026-12-07 and stalled
restarted workers that way (tests/integration/test_dunning_crash.py).
"""

from __future__ import annotations

from typing import Any

import faust


class RoutingTableWrite(RuntimeError):
    """Something tried to store a value in a table that only routes."""


class RoutingTable(faust.Table[bytes, Any]):
    """Raises :class:`RoutingTableWrite` before a set, delete or clear reaches the changelog."""

    def on_key_set(self, key: Any, value: Any) -> None:
        raise RoutingTableWrite(f"table {self.name!r} only routes: it holds no values (key {key!r})")

    def on_key_del(self, key: Any) -> None:
        raise RoutingTableWrite(f"table {self.name!r} only routes: it holds no values (key {key!r})")

    def on_clear(self) -> None:
        raise RoutingTableWrite(f"table {self.name!r} only routes: it holds no values")


def routing_table(app: faust.App, name: str, *, partitions: int) -> RoutingTable:
    """Registered with the app like ``app.Table``: keys are raw bytes, partitioned as the
    topic keyed alike, so a key's owner here is the owner of its partition there."""
    table = RoutingTable(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=partitions,
        key_type=bytes,
        use_partitioner=True,
    )
    app.tables.add(table)
    return table
