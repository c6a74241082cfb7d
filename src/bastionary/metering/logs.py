"""Is a partition still the log we landed from? Anchors, fingerprints and the log port.

A broker that lost its data (the in-memory embedded broker restarted, Kafka brought back
without its volume, a topic deleted and created again) starts offsets from 0 once more.
Offsets alone would then make new records look "already landed". So the sink keeps, per
partition, an **anchor**: the offset and fingerprint of the last record it landed. Before a
flush extends what has landed, and on a timer, it asks the broker for the record at the
anchor. The same record means the same log; anything else (another record there, or no
record because the log is now shorter or starts later) means the log was replaced, and
the partition opens a new epoch and lands the new log from its start.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b
from typing import Protocol


def record_fingerprint(timestamp_ms: int, key: bytes | None, value: bytes | None) -> int:
    """A 63-bit digest of what makes a Kafka record itself: its timestamp, key and value.

    Never 0, so 0 can mean "unknown" in rows written before fingerprints existed.
    """
    digest = blake2b(digest_size=8)
    digest.update(timestamp_ms.to_bytes(8, "big", signed=True))
    for part in (key, value):
        if part is None:
            digest.update(b"\xff" * 4)
        else:
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)
    return (int.from_bytes(digest.digest(), "big") >> 1) or 1


@dataclass(frozen=True, slots=True)
class Anchor:
    """The last landed record of a partition: where it was and what it was."""

    offset: int
    fingerprint: int  # 0: unknown (a marker from before fingerprints), trusted as the same log


@dataclass(frozen=True, slots=True)
class LogProbe:
    """What the broker holds at an asked offset."""

    offset: int
    fingerprint: int | None  # None: no record there (below the log start, or at/after its end)
    log_start: int  # where a rewind should start reading
    high_water: int | None  # the log's end as last reported, for the evidence in the logs
    # The first record at or past ``offset``, when the probe read one: ``offset`` itself, or,
    # past offsets that hold no record (transaction markers, compaction), a later one.
    next_record: int | None = None

    def matches(self, anchor: Anchor) -> bool:
        if anchor.fingerprint == 0:
            return self.fingerprint is not None
        return self.fingerprint == anchor.fingerprint


class PartitionLog(Protocol):
    """The broker side the sink needs; the worker implements it on Kafka."""

    async def probe(self, anchors: dict[tuple[str, int], int]) -> dict[tuple[str, int], LogProbe]:
        """The record at each ``(topic, partition) -> offset``; raises if the broker does not answer."""
        ...

    async def rewind(self, topic: str, partition: int, offset: int) -> None:
        """Make the consumer read ``partition`` again from ``offset``."""
        ...
