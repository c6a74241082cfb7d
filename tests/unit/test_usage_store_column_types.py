"""The usage store describes each table it inserts into natively once, not before every
insert, and again after a failure; event and rollup rows go as JSON lines with their token."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from bastionary.metering.ports import EventRow, MarkerRow
from bastionary.storage.usage import FLUSH_INSERT_SETTINGS, ClickHouseUsageStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class RecordingClient:
    """Records what the store asks of clickhouse-connect; ``fail_next`` makes one insert fail."""

    def __init__(self) -> None:
        self.described: list[str] = []
        self.inserts: list[tuple[str, Any, dict[str, str] | None]] = []
        self.fail_next = False

    def create_insert_context(self, table: str, column_names: Any) -> Any:
        self.described.append(table)
        return SimpleNamespace(column_types=[f"{table}.{name}" for name in column_names])

    def insert(self, table: str, rows: Any, column_names: Any, column_types: Any, settings: Any) -> None:
        assert column_types == [f"{table}.{name}" for name in column_names]
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("server went away")
        self.inserts.append((table, list(rows), settings))

    def raw_insert(self, table: str, column_names: Any, insert_block: bytes, settings: Any, fmt: str) -> None:
        assert fmt == "JSONCompactEachRow" and settings["date_time_input_format"] == "best_effort"
        rows = [tuple(msgspec.json.decode(line)) for line in insert_block.splitlines()]
        self.inserts.append((table, rows, {k: v for k, v in settings.items() if k != "date_time_input_format"}))


def _event(offset: int) -> EventRow:
    return EventRow("e", "s", "t", "c", NOW, "{}", "00", NOW, "usage", 0, 0, offset, 0)


def _marker() -> MarkerRow:
    return MarkerRow("usage", 0, 0, 0, 1, 2, 2, 0, 0, "w", NOW, 7)


def test_each_table_is_described_once_and_tokens_still_reach_each_insert():
    client = RecordingClient()
    store = ClickHouseUsageStore(client)
    for flush in range(3):
        store.insert_markers([_marker()])
        store.insert_events([_event(flush)], f"tok{flush}/events")
    assert client.described == ["ingest_progress"]  # the events went as JSON: nothing to describe
    tokens = [settings for table, _, settings in client.inserts if table == "usage_events"]
    assert tokens == [FLUSH_INSERT_SETTINGS | {"insert_deduplication_token": f"tok{n}/events"} for n in range(3)]


def test_a_failed_insert_makes_the_next_one_describe_the_table_again():
    client = RecordingClient()
    store = ClickHouseUsageStore(client)
    store.insert_markers([_marker()])
    client.fail_next = True
    with pytest.raises(ConnectionError):
        store.insert_markers([_marker()])
    store.insert_markers([_marker()])
    assert client.described == ["ingest_progress", "ingest_progress"]
    assert len(client.inserts) == 2
