"""What the usage sink takes in and hands out: records, admissions, dead letters, counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bastionary.ingest.errors import ErrorClass
from bastionary.metering.logs import record_fingerprint
from bastionary.outbound import Headers


@dataclass(slots=True)
class InboundRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    handle: object = None  # the Faust event to ack once the flush has landed

    def __reduce__(self) -> tuple[type[InboundRecord], tuple[object, ...]]:
        # Sent to the processes that examine records (metering.examine_pool): the Faust handle stays.
        fields = (self.topic, self.partition, self.offset, self.timestamp_ms, self.key, self.value, self.headers)
        return (InboundRecord, fields)

    @property
    def fingerprint(self) -> int:
        return record_fingerprint(self.timestamp_ms, self.key, self.value)


class Admission(Enum):
    BUFFERED = "buffered"  # held, unacked, until its flush lands
    LANDED = "landed"  # it had landed before: ack it now
    STALE = "stale"  # read before the partition was rewound: drop it, never ack it


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: Headers
    code: ErrorClass


@dataclass
class FlushStats:
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    by_error: dict[str, int] = field(default_factory=dict)
