"""The third same-run reference: ClickHouse's own Kafka table engine, inside chdb.

What a team gets by letting ClickHouse consume the topic itself: a ``Kafka`` table read with
``JSONAsString`` (which splits a batch record's JSON array into one row per member), a
materialized view into a MergeTree of raw events and another into per-minute counts in a
SummingMergeTree. No validation, no dead letters, and no dedupe: every repeat is stored and
counted, which is why the bench reports its over-count beside its rate.

Timing. ClickHouse does not say when its consumer took the first record, so each raw row
carries the moment its block was written (``landed DEFAULT now64(6)``, evaluated once per
block). The rate is what landed after the first block divided by the time from the first
block to the last: the steady-state rate, which flatters this reference slightly against
the others (they are timed from their first record taken). Blocks are at most
``_BLOCK_EVENTS`` events or 250 ms, as the hand-written loop's flushes are, and at least
ten per run, so the span is made of many blocks even in quick mode.

Two quirks of chdb 4.4 with the Tansu broker (see the shared embedded-stack notes):
``CREATE TABLE ... ENGINE = Kafka`` raises ``Shutdown was called (LOGICAL_ERROR)`` yet creates
a table that consumes, and librdkafka's default session timeout makes the group join take
24-29 s; a config file passed as chdb's ``config-file`` option cuts it to about 4 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

_BLOCK_EVENTS = 20_000
_FLUSH_MS = 250
_POLL_SECONDS = 0.1
_CONFIG = "<clickhouse><kafka><session_timeout_ms>6000</session_timeout_ms></kafka></clickhouse>\n"


def block_records(expect_records: int, expect_events: int) -> int:
    """Kafka messages per block: ``_BLOCK_EVENTS`` events, and at least ten blocks a run."""
    per_record = max(expect_events / max(expect_records, 1), 1.0)
    events = max(min(_BLOCK_EVENTS, expect_events // 10), 1)
    return max(int(events / per_record), 1)


def _client(data_dir: Path) -> Any:
    import clickhouse_connect

    config = data_dir / "kafka-engine.xml"
    config.write_text(_CONFIG)
    store = data_dir / "chdb"
    store.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=f"chdb://{store.resolve()}", chdb_options={"config-file": str(config)})


def _create(client: Any, bootstrap: str, topic: str, group: str, block: int) -> None:
    client.command(
        "CREATE TABLE IF NOT EXISTS raw (id String, source String, type String, customer_id String,"
        " time DateTime64(6, 'UTC'), data String, partition UInt64, offset UInt64,"
        " landed DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = MergeTree ORDER BY (customer_id, time)"
    )
    client.command(
        "CREATE TABLE IF NOT EXISTS rollup (type String, customer_id String, minute DateTime('UTC'),"
        " events UInt64) ENGINE = SummingMergeTree ORDER BY (type, customer_id, minute)"
    )
    settings = (
        f"kafka_broker_list = '{bootstrap}', kafka_topic_list = '{topic}', kafka_group_name = '{group}',"
        f" kafka_format = 'JSONAsString', kafka_num_consumers = 1, kafka_max_block_size = {block},"
        f" kafka_flush_interval_ms = {_FLUSH_MS}"
    )
    try:
        client.command(f"CREATE TABLE queue (raw String) ENGINE = Kafka SETTINGS {settings}")
    except Exception as exc:  # chdb 4.4 reports a shutdown it did not do; the table consumes
        if "Shutdown was called" not in str(exc):
            raise
    if not client.command("EXISTS TABLE queue"):
        raise RuntimeError("the Kafka engine table was not created")
    client.command(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS to_raw TO raw AS SELECT"
        " JSONExtractString(raw, 'id') AS id, JSONExtractString(raw, 'source') AS source,"
        " JSONExtractString(raw, 'type') AS type, JSONExtractString(raw, 'subject') AS customer_id,"
        " parseDateTime64BestEffort(JSONExtractString(raw, 'time'), 6) AS time,"
        " JSONExtractRaw(raw, 'data') AS data, _partition AS partition, _offset AS offset FROM queue"
    )
    client.command(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS to_rollup TO rollup AS SELECT"
        " JSONExtractString(raw, 'type') AS type, JSONExtractString(raw, 'subject') AS customer_id,"
        " toStartOfMinute(parseDateTime64BestEffort(JSONExtractString(raw, 'time'), 6)) AS minute,"
        " count() AS events FROM queue GROUP BY type, customer_id, minute"
    )


def run(
    bootstrap: str, topic: str, group: str, expect_records: int, expect_events: int, data_dir: Path
) -> dict[str, float]:
    """Consume ``topic`` through the Kafka engine until ``expect_events`` rows landed."""
    client = _client(data_dir)
    _create(client, bootstrap, topic, group, block_records(expect_records, expect_events))
    while client.command("SELECT count() FROM raw") < expect_events:
        time.sleep(_POLL_SECONDS)
    client.command("DROP TABLE queue")  # stop consuming before the figures are read
    rows, distinct, first, last = client.query(
        "SELECT count(), uniqExact(source, id), toUnixTimestamp64Micro(min(landed)),"
        " toUnixTimestamp64Micro(max(landed)) FROM raw"
    ).result_rows[0]
    timed_rows, timed_records = client.query(
        "SELECT count(), uniqExact(partition, offset) FROM raw WHERE landed > fromUnixTimestamp64Micro({first:Int64})",
        parameters={"first": first},
    ).result_rows[0]
    return {
        "records": timed_records,
        "events": timed_rows,
        "duplicates": 0,
        "first": first / 1e6,
        "last": last / 1e6,
        "stored_events": rows,
        "distinct_events": distinct,
        "rollup_events": client.command("SELECT sum(events) FROM rollup"),
    }
