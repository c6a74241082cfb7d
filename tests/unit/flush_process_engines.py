"""Engines the flush process opens in the tests (sent to it by reference, so module-level).

Each writes what it landed to a journal file, since the test cannot see into the child."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bastionary.dedupe.rocksdb_store import RocksDedupeStore
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.metering.landing import LocalFlushEngine
from bastionary.metering.meters import Meter
from bastionary.metering.readings import MeterIndex
from tests.unit.sink_fakes import FakeStore

FAILING_PARTITION = 7  # events of this partition fail to insert


class JournaledStore(FakeStore):
    def __init__(self, journal: Path):
        super().__init__()
        self.journal = journal

    def _write(self, table: str, token: str, rows: list[Any]) -> None:
        with self.journal.open("a") as out:
            out.write(json.dumps([table, token, len(rows)]) + "\n")

    def insert_markers(self, rows: list[tuple]) -> None:
        super().insert_markers(rows)
        for row in rows:
            self._write("markers", f"{row[0]}/{row[2]}@{row[1]}/{row[3]}-{row[4]}", [row])

    def insert_events(self, rows: list[Any], token: str) -> None:
        if f"/{FAILING_PARTITION}@" in token:
            raise ValueError(f"ClickHouse refused {token}")
        super().insert_events(rows, token)
        self._write("events", token, rows)

    def insert_rollups(self, rows: list[Any], token: str) -> None:
        super().insert_rollups(rows, token)
        self._write("rollups", token, rows)


@dataclass(frozen=True)
class OpenJournaled:
    root: Path
    meters: list[Meter]
    limits: RecordLimits
    horizon: timedelta

    def __call__(self) -> LocalFlushEngine:
        dedupe = RocksDedupeStore(self.root / "dedupe", int(self.horizon.total_seconds()))
        store = JournaledStore(self.root / "journal")
        meters = MeterIndex(self.meters)
        return LocalFlushEngine(store, dedupe, meters, self.limits, self.horizon, closers=[dedupe.close])


def open_nothing() -> LocalFlushEngine:
    raise RuntimeError("no storage here")


def journal(root: Path) -> list[tuple[str, str, int]]:
    path = root / "journal"
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]
