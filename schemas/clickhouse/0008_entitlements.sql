-- Entitlement overrides as received on entitlements.overrides. A re-sent override_id
-- replaces the earlier one.
CREATE TABLE IF NOT EXISTS entitlement_overrides
(
    event_id     String,
    override_id  String,
    customer_id  String,
    feature      String,
    effective_at DateTime64(3, 'UTC'),
    expires_at   Nullable(DateTime64(3, 'UTC')),
    limit_value  Nullable(Decimal(38, 9)),
    limit_delta  Nullable(Decimal(38, 9)),
    enabled      Nullable(UInt8),
    received_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (customer_id, override_id);

-- Every event emitted on entitlements.changes. Ids are derived from the customer history,
-- so a crossing decided twice lands on the same key. ordinal numbers a customer's changes
-- in the order they were decided, which later decisions depend on.
CREATE TABLE IF NOT EXISTS entitlement_changes
(
    change_id    String,
    customer_id  String,
    feature      String,
    kind         LowCardinality(String),  -- threshold, exhausted, restored, suspended, reinstated
    period_start Nullable(DateTime64(3, 'UTC')),
    detail       String,                  -- JSON
    ordinal      UInt32,
    recorded_at  DateTime64(3, 'UTC'),
    published    UInt8
)
ENGINE = ReplacingMergeTree(published)
ORDER BY (customer_id, change_id)
