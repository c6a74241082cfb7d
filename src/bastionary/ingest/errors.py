"""Why a record or event was rejected. The ``code`` travels as the ``error.class`` header."""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    INVALID_ENCODING = "invalid_encoding"  # value is not UTF-8
    INVALID_JSON = "invalid_json"  # value is not JSON
    NOT_CLOUDEVENT = "not_cloudevent"  # required attribute missing or of the wrong type
    INVALID_TIME = "invalid_time"  # `time` is not RFC 3339
    FUTURE_TIME = "future_time"  # `time` beyond the allowed clock skew
    INVALID_METER_VALUE = "invalid_meter_value"  # value_property missing or not a number
    RECORD_TOO_LARGE = "record_too_large"  # record over BASTIONARY_MAX_RECORD_BYTES
    EMPTY_BATCH = "empty_batch"  # a JSON array with no members
    DUPLICATE_CONFLICT = "duplicate_conflict"  # (source, id) seen before with another payload


class Rejection(Exception):
    """A rejected record or batch member; never escapes the worker, always dead-lettered."""

    def __init__(self, code: ErrorClass, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
