-- Customer records from billing.customers (bastionary.customer.upserted.v1): the latest
-- event per customer wins (by the event's time, then by when it was received).
CREATE TABLE IF NOT EXISTS customers
(
    customer_id  String,
    name         String,
    email        String,
    address      String,  -- JSON object: line1, line2, city, postal_code, region, country
    tax_id       String,
    tax_exempt   Bool,
    event_id     String,
    updated_at   DateTime64(3, 'UTC'),  -- the event's time
    received_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY customer_id
