"""Dedupe: has (source, id) been counted before, and was it this very record?

Each entry remembers where the key was first seen (partition, offset, member index) and a
digest of its payload. That makes the check replay-safe: when a record is delivered again
after a crash, its events match their own first sighting and are processed again (the
ClickHouse writes are idempotent), instead of being mistaken for duplicates and lost.

The store is a cache of what ClickHouse ``usage_events`` already holds: after a crash or a
rebalance, the missing tail is re-read from ClickHouse (see ``metering.sink``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


# Not frozen: a frozen dataclass's __init__ costs several times more, and one is built for
# every event a flush judges. Nothing changes a sighting after it is made.
@dataclass(slots=True)
class Sighting:
    offset: int
    index: int
    seen_at: int  # broker timestamp, seconds since the epoch
    payload_hash: bytes
    log_epoch: int = 0  # which incarnation of the topic (see Settings.kafka_log_epoch)

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.log_epoch, self.offset, self.index)


class Verdict(Enum):
    NEW = "new"  # first sighting, or this very record replayed
    DUPLICATE = "duplicate"  # a later record repeating an earlier event
    CONFLICT = "conflict"  # a later record reusing (source, id) with another payload


def judge(previous: Sighting | None, current: Sighting) -> Verdict:
    if previous is None or previous.position == current.position:
        return Verdict.NEW
    if previous.position > current.position:
        # Only possible if the cache outlived a reset database; treat the present record as first.
        return Verdict.NEW
    return Verdict.DUPLICATE if previous.payload_hash == current.payload_hash else Verdict.CONFLICT
