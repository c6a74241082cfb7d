-- Dunning. Invoices as read from billing.invoices: what is owed, and when it is due.
CREATE TABLE IF NOT EXISTS receivables
(
    invoice_id   String,
    customer_id  String,
    plan         String,
    currency     LowCardinality(String),
    total        Decimal(38, 9),
    issued_at    DateTime64(3, 'UTC'),
    due_at       DateTime64(3, 'UTC'),
    period_start DateTime64(3, 'UTC'),
    period_end   DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY invoice_id;

-- Payments as received, one row per (kind, payment_id): a duplicate payment_id
-- lands on the same key and counts once when read with FINAL.
CREATE TABLE IF NOT EXISTS payments
(
    event_id    String,
    kind        LowCardinality(String),  -- succeeded, failed, refunded, voided
    payment_id  String,                  -- the event id for voided
    invoice_id  String,
    customer_id String,
    amount      Decimal(38, 9),
    currency    LowCardinality(String),
    paid_at     DateTime64(3, 'UTC'),
    reason      String,
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (kind, payment_id);

-- Every notice, skipped step, delivery attempt, response and state change of every case.
-- Derived rows have ids derived from (invoice, step or sequence), so a decision taken
-- twice lands on the same key. Published rows (notices, reinstatements) are stored with
-- published 0 and rewritten with 1 once on dunning.notices.
CREATE TABLE IF NOT EXISTS dunning_events
(
    event_id    String,
    invoice_id  String,
    customer_id String,
    kind        LowCardinality(String),  -- notice, skipped, state, reinstated, attempt, delivered, delivery_failed, response
    step        UInt16,                  -- policy step (1-based) or the state sequence number
    action      LowCardinality(String),  -- remind, final_notice, suspend, mark_uncollectible, or the response type
    channel     LowCardinality(String),  -- email, webhook (deliveries, responses)
    detail      String,                  -- the state, the attempt outcome, the response reason
    amount_due  Decimal(38, 9),
    currency    LowCardinality(String),
    at          DateTime64(3, 'UTC'),    -- the dunning clock at the decision, or the event time
    until       Nullable(DateTime64(3, 'UTC')),  -- promised_by of a promise, resolution of nothing else
    recorded_at DateTime64(3, 'UTC'),
    document    String CODEC(ZSTD(3)),   -- the published CloudEvent data, as JSON
    published   UInt8
)
ENGINE = ReplacingMergeTree(published)
ORDER BY (customer_id, invoice_id, kind, event_id);

ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS billing_email String DEFAULT ''
