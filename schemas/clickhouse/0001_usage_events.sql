-- Raw, deduplicated usage events: the audit trail every rollup and invoice is re-derived from.
-- One row per accepted event. A record replayed after a crash is inserted with the same
-- insert_deduplication_token and dropped by ClickHouse; should a copy slip past the token
-- window, ReplacingMergeTree still collapses rows with the same sort key, so query with FINAL
-- when exactness matters.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id         String,
    source           String,
    type             LowCardinality(String),
    customer_id      String,
    time             DateTime64(6, 'UTC'),
    data             String CODEC(ZSTD(3)),
    payload_hash     String,
    ingested_at      DateTime64(3, 'UTC'),
    ingest_topic     LowCardinality(String),
    ingest_epoch     UInt64,
    ingest_partition UInt32,
    ingest_offset    UInt64,
    ingest_index     UInt32
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (customer_id, type, time, source, event_id)
SETTINGS non_replicated_deduplication_window = 100000
