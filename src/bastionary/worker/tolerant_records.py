"""Record batches whose header names are not UTF-8 must not stop a partition.

aiokafka decodes header names as strict UTF-8. One record with a name that is not (any
producer can send one: the wire format is bytes) raises ``CorruptRecordException`` on every
fetch of its partition, so the partition stops for good. Here a batch that fails that way
is decoded again in aiokafka's pure-Python parser with ``surrogateescape``: the record then
reaches the sink, which dead-letters it (``invalid_encoding``) or lands it, like any other.
Every other batch is read by aiokafka's C parser as before.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords

_FRAME = struct.Struct(">qi")  # base offset, batch length: every batch starts with these


class _EscapedBytes(bytes):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "surrogateescape")


class _EscapingBuffer(bytearray):
    """Slices decode with escapes: header names are the only text the parser decodes."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _EscapedBytes(item) if isinstance(index, slice) else item


class _EscapingBatch(_DefaultRecordBatchPy):  # type: ignore[misc]  # aiokafka ships no types: its classes are Any
    _buffer: bytearray  # aiokafka's parser reads the batch from it (decompressed in place of the raw one)

    def __init__(self, buffer: bytes) -> None:
        super().__init__(buffer)
        self._buffer = _EscapingBuffer(self._buffer)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        if not isinstance(self._buffer, _EscapingBuffer):
            self._buffer = _EscapingBuffer(self._buffer)


class _TolerantBatch:
    """aiokafka's fast batch, with the escaping parser behind it for the rare bad batch."""

    def __init__(self, fast: Any, raw: bytes) -> None:
        self._fast = fast
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def __next__(self) -> Any:
        return next(self._fast)

    def __iter__(self) -> Iterator[Any]:
        last_offset: int | None = None
        records = iter(self._fast)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except (UnicodeDecodeError, CorruptRecordException) as exc:
                # The C parser raises the UnicodeDecodeError itself; aiokafka's Python one wraps it.
                if not isinstance(exc, UnicodeDecodeError) and "UnicodeDecodeError" not in str(exc):
                    raise
                for escaped in _EscapingBatch(self._frame()):
                    if last_offset is None or escaped.offset > last_offset:
                        yield escaped
                return
            last_offset = record.offset
            yield record

    def _frame(self) -> bytes:
        pos, raw, wanted = 0, self._raw, self._fast.base_offset
        while pos + _FRAME.size <= len(raw):
            base_offset, length = _FRAME.unpack_from(raw, pos)
            end = pos + _FRAME.size + length
            if base_offset == wanted:
                return bytes(raw[pos:end])
            pos = end
        raise CorruptRecordException(f"batch at offset {wanted} not found again in its fetch response")


class TolerantMemoryRecords:
    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._fast = MemoryRecords(raw)

    def size_in_bytes(self) -> int:
        size: int = self._fast.size_in_bytes()
        return size

    def has_next(self) -> bool:
        more: bool = self._fast.has_next()
        return more

    def next_batch(self) -> Any:
        batch = self._fast.next_batch()
        return None if batch is None else _TolerantBatch(batch, self._raw)


def install() -> None:
    """Make every aiokafka consumer in this process (Faust's included) read batches this way."""
    fetcher.MemoryRecords = TolerantMemoryRecords
