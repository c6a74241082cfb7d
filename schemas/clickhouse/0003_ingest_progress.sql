-- One row per flush of one partition, written BEFORE the flush's data (see metering/sink.py).
-- The newest row of a partition is the flush that may be incomplete: a worker that takes the
-- partition over replays exactly that offset range with the same deduplication tokens.
-- log_epoch tells incarnations of a topic apart (the embedded broker loses its topics on
-- restart, so offsets start again from 0 under a new epoch).
CREATE TABLE IF NOT EXISTS ingest_progress
(
    topic            LowCardinality(String),
    log_epoch        UInt64,
    partition        UInt32,
    first_offset     UInt64,
    last_offset      UInt64,
    records          UInt32,
    events_accepted  UInt32,
    duplicates       UInt32,
    dead_lettered    UInt32,
    worker_id        String,
    written_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, log_epoch, first_offset)
