"""What the usage sink takes in and hands out: records, admissions, dead letters, counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction

from bastionary.ingest.errors import ErrorClass
from bastionary.metering.logs import record_fingerprint
from bastionary.outbound import Headers

NO_TIMESTAMP = -1  # Kafka's own "no timestamp"; examine dead-letters it as invalid_record_timestamp
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Below this many seconds the float product is within 2**-9 ms of the exact one, so rounding it
# is exact and costs no Fraction (every timestamp until the year 2242).
_FAST_SECONDS = 2.0**33


def record_timestamp_ms(seconds: float | None) -> int:
    """A record's Kafka timestamp in integer ms, from the float seconds Faust hands over.

    Faust's consumer message keeps only ``timestamp / 1000.0`` of the broker's int64 (the
    integer is not on the message), so this is the one conversion every fingerprint of a record
    goes through: the intake's, and the log probe's (:func:`broker_timestamp_ms`). The broker's
    integer comes back exactly for any ``|ms| < 1000 * 2**43`` (about the year 280,000); past
    that the float has already lost the last digits, the same ones on both sides, and this is
    the float's exact value in ms, rounded. Any other float (never Faust's) still gives an int. The result always fits an int64 (a fingerprint packs it in 8 bytes): at the top of
    the range ``ms / 1000.0 * 1000`` is 2**63, one past Long.MAX_VALUE, and is clamped.
    """
    if seconds is None or math.isnan(seconds):
        return NO_TIMESTAMP
    if -_FAST_SECONDS < seconds < _FAST_SECONDS:
        return round(seconds * 1000)
    if math.isinf(seconds):
        return _INT64_MAX if seconds > 0 else _INT64_MIN
    return max(_INT64_MIN, min(_INT64_MAX, round(Fraction(seconds) * 1000)))


def broker_timestamp_ms(timestamp_ms: int | None) -> int:
    """What :func:`record_timestamp_ms` makes of a raw Kafka timestamp once Faust has had it:
    the log probe reads aiokafka's integer, and must fingerprint the number the intake saw."""
    if timestamp_ms is None:
        return NO_TIMESTAMP
    try:
        seconds = timestamp_ms / 1000.0  # as faust.transport.drivers.aiokafka does
    except OverflowError:  # no Kafka timestamp is this large; a hostile caller's int might be
        return _INT64_MAX if timestamp_ms > 0 else _INT64_MIN
    return record_timestamp_ms(seconds)


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
