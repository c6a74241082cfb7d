-- Credit limits: a customer record's `credit_limit` (JSON {currency, amount, alert_at}, or ''),
-- and what the spend monitor announced: threshold crossings, and the limit reached and
-- restored. Rows are keyed by their deterministic event id (stored with published 0, then
-- rewritten with 1 once on billing.credits). Read with FINAL.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS credit_limit String DEFAULT '';
CREATE TABLE IF NOT EXISTS spend_events
(
    event_id     String,
    customer_id  String,
    kind         LowCardinality(String),  -- threshold_crossed | reached | restored
    currency     LowCardinality(String),
    share        String,                  -- the alert share of the limit; '1' for reached / restored
    period_start String,                  -- the open period a crossing belongs to ('' without one)
    exposure     Decimal(38, 9),          -- unpaid + running charge when decided
    credit_limit Decimal(38, 9),
    at           DateTime64(3, 'UTC'),
    document     String,                  -- the published CloudEvent data, JSON
    published    UInt8
)
ENGINE = ReplacingMergeTree(published)
ORDER BY (customer_id, event_id)
