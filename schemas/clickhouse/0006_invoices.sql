-- Finalized invoices and their lines. Invoice ids are derived from (subscription, period),
-- so a re-rated period lands on the same key; query with FINAL.
CREATE TABLE IF NOT EXISTS invoices
(
    invoice_id      String,
    customer_id     String,
    subscription_id String,
    plan            String,
    currency        LowCardinality(String),
    kind            LowCardinality(String),  -- period | adjustment
    period_start    DateTime64(3, 'UTC'),
    period_end      DateTime64(3, 'UTC'),
    usage_cutoff    DateTime64(3, 'UTC'),
    issued_at       DateTime64(3, 'UTC'),
    due_at          DateTime64(3, 'UTC'),
    subtotal        Decimal(38, 9),
    credits_applied Decimal(38, 9),
    total           Decimal(38, 9),
    status          LowCardinality(String),
    document        String CODEC(ZSTD(3)),  -- the published invoice data, as JSON
    published       UInt8  -- 0 when stored, 1 once on billing.invoices (the row with 1 wins)
)
ENGINE = ReplacingMergeTree(published)
ORDER BY (customer_id, invoice_id);

CREATE TABLE IF NOT EXISTS invoice_lines
(
    invoice_id  String,
    line_no     UInt16,
    customer_id String,
    subscription_id String,
    line_key    String,  -- plan:price, the identity late-usage adjustments refer to
    price_key   String,
    meter       String,
    description String,
    quantity    Decimal(38, 9),
    amount      Decimal(38, 9),
    currency    LowCardinality(String),
    period_start DateTime64(3, 'UTC')  -- the period this line bills (earlier than the invoice's on adjustments)
)
ENGINE = ReplacingMergeTree
ORDER BY (invoice_id, line_no)
