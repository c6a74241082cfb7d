"""Whether this worker owns a key's partition of a table, asked per request without Faust's
routing.

Faust's ``table_route`` answers that for every request: it serializes the key, hashes it to a
partition, builds the owner's URL, compares it with this worker's and raises ``SameNode``
when they match. That was about a tenth of what an entitlement check cost the event loop
(README, thirteenth session). A key's partition depends only on the key and the table's
partition count, so it is kept per key. Whether the partition is active here is asked on
each request, from the assignor's current assignment, since a rebalance moves it. A key
owned elsewhere, or asked before any assignment, still goes through Faust's route, which
forwards the request or refuses it.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP

# 10.7 MB with 20-character ids, 21.5 MB with 128 (the longest a customer id may be), keys
# included, measured with tracemalloc; past it the memory starts again, one hash per key.
REMEMBERED_KEYS = 100_000


class PartitionOwnership:
    def __init__(self, app: faust.App, table: Any, remembered: int = REMEMBERED_KEYS):
        self._app = app
        self._changelog = table.changelog_topic  # Faust routes a table's keys by its changelog topic
        self._remembered = remembered
        self._partitions: dict[str, TP] = {}
        # Faust makes a new TP on every hash. The keys share one per partition instead: a TP of
        # its own per key was 6.4 MB of the memory above (17.1 and 27.9 MB).
        self._shared: dict[TP, TP] = {}

    def owned_here(self, key: str) -> bool:
        """True if this worker holds ``key``'s partition as active now.

        Raises what Faust's own routing raises before the topic's metadata is known (the
        caller answers 503 for it, as for Faust's).
        """
        tp = self._partitions.get(key)
        if tp is None:
            tp = self._partition_of(key)
            tp = self._shared.setdefault(tp, tp)
            if len(self._partitions) >= self._remembered:
                self._partitions.clear()
            self._partitions[key] = tp
        return bool(self._app.assignor.is_active(tp))

    def forget(self) -> None:
        """Partitions moved: the partition count may have changed with them."""
        self._partitions.clear()
        self._shared.clear()

    def _partition_of(self, key: str) -> TP:
        serialized = self._changelog.prepare_key(key, None)[0]  # as Faust's router serializes it
        tp: TP = self._app.producer.key_partition(self._changelog.get_topic_name(), serialized)
        return tp
