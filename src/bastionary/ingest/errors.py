"""Why a record or event was rejected. The ``code`` travels as the ``error.class`` header."""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    INVALID_ENCODING = "invalid_encoding"  # value, key, or a ce_* header is not UTF-8
    INVALID_JSON = "invalid_json"  # value is not JSON
    NESTING_TOO_DEEP = "nesting_too_deep"  # JSON nested deeper than MAX_NESTING_DEPTH
    NOT_CLOUDEVENT = "not_cloudevent"  # required attribute missing or of the wrong type
    INVALID_TIME = "invalid_time"  # `time` is not RFC 3339
    FUTURE_TIME = "future_time"  # `time` beyond the allowed clock skew
    INVALID_RECORD_TIMESTAMP = "invalid_record_timestamp"  # the Kafka timestamp is outside 1970..2105
    INVALID_METER_VALUE = "invalid_meter_value"  # value_property missing, or not a number
    VALUE_OUT_OF_RANGE = "value_out_of_range"  # over 18 integer or 9 fractional digits
    NEGATIVE_VALUE = "negative_value"  # below zero for a meter without allow_negative
    RECORD_TOO_LARGE = "record_too_large"  # record over BASTIONARY_MAX_RECORD_BYTES
    BATCH_TOO_LARGE = "batch_too_large"  # batch over BASTIONARY_MAX_BATCH_EVENTS
    EMPTY_BATCH = "empty_batch"  # a JSON array with no members
    DUPLICATE_CONFLICT = "duplicate_conflict"  # (source, id) seen before with another payload
    INTERNAL_ERROR = "internal_error"  # a bug of ours met this record: it costs the record, not the partition


class Rejection(Exception):
    """A rejected record or batch member; never escapes the worker, always dead-lettered."""

    def __init__(self, code: ErrorClass, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[Rejection], tuple[ErrorClass, str]]:
        # Sent back from the process that examines records (metering.examine_pool).
        return (Rejection, (self.code, self.message))
