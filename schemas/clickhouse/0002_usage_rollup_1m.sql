-- 1-minute tumbling rollups per (meter, customer, group), by event time and by ingest minute. Rows are partial aggregates from
-- each flush; every column merges correctly whatever the order or split of the partials:
--   SUM          sum(value_sum)
--   COUNT        sum(event_count)
--   MAX          max(value_max)
--   UNIQUE_COUNT length(groupUniqArrayArray(unique_values))   -- exact, not a sketch
--   LATEST       tupleElement(max(latest), 2)                   -- by event time, ties to the larger value
CREATE TABLE IF NOT EXISTS usage_rollup_1m
(
    meter         LowCardinality(String),
    customer_id   String,
    group_key     String,
    group_values  SimpleAggregateFunction(any, Map(String, String)),  -- follows group_key
    window_start  DateTime('UTC'),
    ingested_minute DateTime('UTC'),  -- broker time, floored: lets rating read usage as of a cutoff
    value_sum     SimpleAggregateFunction(sum, Decimal(38, 9)),
    event_count   SimpleAggregateFunction(sum, UInt64),
    value_max     SimpleAggregateFunction(max, Nullable(Decimal(38, 9))),
    unique_values SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    latest        SimpleAggregateFunction(max, Tuple(DateTime64(6, 'UTC'), Decimal(38, 9)))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (meter, customer_id, group_key, window_start, ingested_minute)
SETTINGS non_replicated_deduplication_window = 100000
