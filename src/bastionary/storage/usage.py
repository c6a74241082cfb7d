"""The usage pipeline's tables in ClickHouse (:class:`bastionary.metering.ports.UsageStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import lz4.frame
import msgspec

from bastionary.metering.ports import EventRow, FlushMarker, MarkerRow, RollupRow, SightingRow
from bastionary.storage.client import Client, insert_rows
from bastionary.storage.migrations import apply_migrations

# A flush's rows travel as JSON lines, which msgspec writes in one C call (0.4-0.7 us a row),
# where clickhouse-connect's Native serialization runs in Python (4-5 us a row, most of it on
# DateTime64 and Decimal columns). ClickHouse reads every value back as the Native insert
# would write it: Decimal text exactly (exponent forms such as 1E-9 included), datetimes with
# their offset under best_effort parsing (tests/integration/test_usage_rows_as_json.py
# compares the stored rows of both inserts). Over HTTP this is all the worker does; the
# server parses. In chdb the engine's JSON parse runs in the worker, and costs about what
# the Native serialization did.
_ROWS_AS_JSON = msgspec.json.Encoder(decimal_format="number")
_JSON_ROWS_FORMAT = "JSONCompactEachRow"
_JSON_ROWS_SETTINGS = {"date_time_input_format": "best_effort"}
# No two rows of a flush's insert share a sorting key: the flush keeps one event per
# (source, id), and its rollup rows are merged per key already. So ClickHouse's merge of each
# inserted block (optimize_on_insert, on by default for these Replacing and Aggregating
# tables) finds nothing to merge, and only costs the server. Off, the rollups insert cost 2.44
# us per event instead of 3.54 and the events insert 2.54 instead of 2.83 (bench --stages, chdb
# in the process, five alternating runs each). Readers aggregate or use FINAL either way: rows
# of one key come from different flushes.
# Both tables are partitioned by month of event time, and a flush holds whatever times its
# records carry (1970..2105: a re-import, a batch spread over the years). ClickHouse refuses a
# block of more than 100 partitions by default (TOO_MANY_PARTS), the same block at every replay:
# the worker stopped at every restart and the partition never moved again. Unlimited, such a
# block lands as one part per month, each deduplicated on replay under the token and its
# ordinal.
FLUSH_INSERT_SETTINGS = {"optimize_on_insert": "0", "max_partitions_per_insert_block": "0"}


class ClickHouseUsageStore:
    """Writes are idempotent by token; reads serve recovery."""

    def __init__(self, client: Client):
        self.client = client
        self._column_types: dict[str, Any] = {}

    def _insert(
        self,
        table: str,
        rows: Sequence[tuple[Any, ...]],
        columns: Sequence[str],
        settings: dict[str, str] | None = None,
    ) -> None:
        """Insert with the table's column types read once, not before every insert.

        clickhouse-connect otherwise sends ``DESCRIBE TABLE`` ahead of each insert: two per
        partition and one for the markers at every flush (0.5 ms of CPU each in chdb, a round
        trip to a server). A failed insert forgets the table's types: after a table changed
        under a running worker, one insert fails and the next describes the table again.
        """
        types = self._column_types.get(table)
        if types is None:
            types = self.client.create_insert_context(table, column_names=columns).column_types
            self._column_types[table] = types
        try:
            insert_rows(self.client, table, rows, columns, types, settings)
        except BaseException:
            self._column_types.pop(table, None)
            raise

    def migrate(self) -> list[int]:
        return apply_migrations(self.client)

    def _insert_as_json(
        self, table: str, rows: Sequence[tuple[Any, ...]], columns: Sequence[str], settings: dict[str, str]
    ) -> None:
        """Insert rows sent as JSON lines; a row JSON cannot carry goes by the Native insert.

        A flush's rows are far fewer than ``max_insert_block_size`` (1,048,449), so either
        insert lands them as one block under the flush's deduplication token: a flush replayed
        after a crash is dropped whichever way either copy went (an upgrade's first replay).
        """
        try:
            body = _ROWS_AS_JSON.encode_lines(rows)
        except (TypeError, ValueError):  # e.g. a str with a lone surrogate, which UTF-8 cannot encode
            self._insert(table, rows, columns, settings)
            return
        compressed: dict[str, str] = {}
        if getattr(self.client, "write_compression", None) == "lz4":  # a server's client opened with lz4 (open_client)
            body, compressed = lz4.frame.compress(body), {"compression": "lz4"}
        self.client.raw_insert(
            table, columns, body, settings=_JSON_ROWS_SETTINGS | settings, fmt=_JSON_ROWS_FORMAT, **compressed
        )

    def insert_events(self, rows: list[EventRow], token: str) -> None:
        if rows:
            self._insert_as_json(
                "usage_events", rows, EventRow._fields, FLUSH_INSERT_SETTINGS | {"insert_deduplication_token": token}
            )

    def insert_rollups(self, rows: list[RollupRow], token: str) -> None:
        if rows:
            self._insert_as_json(
                "usage_rollup_1m",
                rows,
                RollupRow._fields,
                FLUSH_INSERT_SETTINGS | {"insert_deduplication_token": token},
            )

    def insert_markers(self, rows: list[MarkerRow]) -> None:
        self._insert("ingest_progress", rows, MarkerRow._fields)

    def latest_marker(self, topic: str, partition: int) -> FlushMarker | None:
        """The newest flush of a partition, over all epochs."""
        rows = self.client.query(
            "SELECT log_epoch, first_offset, last_offset, last_fingerprint, worker_id FROM ingest_progress"
            " WHERE topic = {t:String} AND partition = {p:UInt32}"
            " ORDER BY log_epoch DESC, last_offset DESC LIMIT 1",
            parameters={"t": topic, "p": partition},
        ).result_rows
        if not rows:
            return None
        epoch, first, last, fingerprint, worker_id = rows[0]
        return FlushMarker(int(epoch), int(first), int(last), int(fingerprint), str(worker_id))

    def sightings_after(
        self, topic: str, partition: int, after: tuple[int, int] | None, horizon: timedelta
    ) -> list[SightingRow]:
        """Dedupe keys of flushes past position ``after`` (epoch, offset): what a cache lacks.
        Keys older than ``horizon`` before the partition's newest landed broker time are left out."""
        epoch, offset = after if after is not None else (0, -1)
        # In whole seconds, as the cache keeps and judges them: against the newest time with its
        # milliseconds, a key the horizon's last second still holds (seen at 90.2 s, newest 100.5
        # s, horizon 10 s) was left out, and a refilled cache counted its repeat again.
        rows = self.client.query(
            "SELECT source, event_id, ingest_epoch, ingest_offset, ingest_index,"
            " toUnixTimestamp(ingested_at), payload_hash"
            " FROM usage_events WHERE ingest_topic = {t:String} AND ingest_partition = {p:UInt32}"
            " AND (ingest_epoch, ingest_offset) > ({e:UInt64}, {o:Int64})"
            " AND ingested_at >= (SELECT toStartOfSecond(max(ingested_at)) FROM usage_events"
            " WHERE ingest_topic = {t:String} AND ingest_partition = {p:UInt32}) - toIntervalSecond({h:UInt64})",
            parameters={"t": topic, "p": partition, "e": epoch, "o": offset, "h": int(horizon.total_seconds())},
        ).result_rows
        return [SightingRow(s, i, int(e), int(o), int(x), int(ts), h) for s, i, e, o, x, ts, h in rows]
