-- Subscription lifecycle events as received on billing.subscriptions, one row per event.
-- The rater rebuilds each subscription's plan segments from them.
CREATE TABLE IF NOT EXISTS subscriptions
(
    event_id        String,
    event_type      LowCardinality(String),  -- created | changed | canceled
    subscription_id String,
    customer_id     String,
    plan            String,
    start           DateTime64(3, 'UTC'),
    billing_anchor  Nullable(DateTime64(3, 'UTC')),
    effective_at    DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, subscription_id, effective_at, event_id)
