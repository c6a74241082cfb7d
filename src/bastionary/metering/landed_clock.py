"""How far the usage pipeline has landed, as a moment: every record the broker took before it
is in ClickHouse.

The rater reads a period's usage as of its cutoff (rows by the minute the broker took their
events), so it must not rate a cutoff before the records the broker took before it have
landed. Offsets say that without trusting anyone's clock: a record the broker took before
moment ``t`` sits below each partition's end offset read after ``t``, and the usage workers'
committed offset passes a record only once it has landed (the sink acks after its inserts,
Faust commits acked offsets). So each look at the topic is kept as a pending snapshot (its
moment, taken before the end offsets were read, and those ends); once the committed offsets
reach a snapshot's ends, everything before its moment has landed.

Pure: the broker is read by the caller (:func:`bastionary.kafka.usage_positions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

# A snapshot per rating run (every 10 s by default): 64 keep ten minutes of them at that
# pace. Past that the newest is replaced, so a long outage is left in steps no finer than
# the snapshots kept, and the moment still advances once the pipeline catches up.
MAX_PENDING = 64


@dataclass(frozen=True)
class Positions:
    """One look at the usage topic, per partition: the first offset the log still holds, its
    end offset, and the usage consumer group's committed offset (absent: none committed)."""

    begins: Mapping[int, int]
    ends: Mapping[int, int]
    committed: Mapping[int, int]

    def landed_past(self, ends: Mapping[int, int]) -> bool:
        """Whether every record below ``ends`` has landed. Records retention removed before
        they were read are gone from the log: nothing is left of them to wait for. A
        partition this look does not show is not known to have landed, and a committed
        offset past the log's end says nothing of it: it was committed in another log of the
        topic (deleted and made again) whose records are gone."""
        for partition, end in ends.items():
            if partition not in self.ends:
                return False
            committed = self.committed.get(partition, 0)
            if committed > self.ends[partition]:
                committed = 0
            done = max(committed, self.begins.get(partition, 0))
            if done < end:
                return False
        return True


class LandedClock:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.through: datetime | None = None  # every record taken before it has landed
        self._pending: list[tuple[datetime, Mapping[int, int]]] = []  # oldest first
        self._max_pending = max_pending

    def observe(self, taken_before: datetime, positions: Positions) -> datetime | None:
        """Keep this look as a snapshot and return the moment through which usage has landed.

        ``taken_before``: a moment before ``positions.ends`` were read (and the committed
        offsets after them). A look that shows no partition is not kept: a topic always has
        one, so the read failed."""
        if not positions.ends:
            return self.through
        snapshot = (taken_before, dict(positions.ends))
        if len(self._pending) >= self._max_pending:
            self._pending[-1] = snapshot
        else:
            self._pending.append(snapshot)
        reached = [k for k, (_, ends) in enumerate(self._pending) if positions.landed_past(ends)]
        if reached:
            newest = reached[-1]
            moment = self._pending[newest][0]
            self.through = moment if self.through is None else max(self.through, moment)
            del self._pending[: newest + 1]
        return self.through
