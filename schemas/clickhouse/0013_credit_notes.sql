-- Credit notes: each request read from billing.credit-notes (version 0), then the rater's
-- decision, issued or rejected (version 1, published 0), then the same once published
-- (version 2). Keyed by the issued id, UUIDv5 of (customer, requested id): a repeated request
-- lands on the same key, and a decided one is never decided again. Read with FINAL.
CREATE TABLE IF NOT EXISTS credit_notes
(
    credit_note_id      String,
    requested_id        String,                  -- the requester's credit_note_id
    request_event_id    String,
    invoice_id          String,
    customer_id         String,
    status              LowCardinality(String),  -- requested | issued | rejected
    currency            LowCardinality(String),  -- the invoice's; '' until decided
    amount              Decimal(38, 9),          -- 0 until issued
    reduces_amount_due  Decimal(38, 9),
    refunded            Decimal(38, 9),
    credited_to_balance Decimal(38, 9),
    requested_at        DateTime64(3, 'UTC'),    -- the request event's time
    issued_at           Nullable(DateTime64(3, 'UTC')),
    request             String,                  -- the request's data, JSON
    document            String,                  -- the decision as published, JSON ('' until decided)
    version             UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (customer_id, credit_note_id)
