-- Every credit movement: grants and voids from billing.credit-grants, and the amounts each
-- finalized invoice drew (applied) or let lapse (expired). A grant's balance is
-- amount - sum(applied) - sum(expired); query with FINAL (rows are keyed by movement_id).
CREATE TABLE IF NOT EXISTS credit_ledger
(
    movement_id  String,
    kind         LowCardinality(String),  -- granted | voided | applied | expired
    grant_id     String,
    customer_id  String,
    amount       Decimal(38, 9),
    currency     LowCardinality(String),
    priority     Int32,
    effective_at DateTime64(3, 'UTC'),
    expires_at   Nullable(DateTime64(3, 'UTC')),
    invoice_id   String,
    recorded_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, grant_id, movement_id)
