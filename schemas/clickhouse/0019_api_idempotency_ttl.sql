-- Idempotency keys answer for 35 days, then a request under one is a new request (Stripe
-- keeps them 24 hours). 35 days is the default BASTIONARY_DEDUPE_HORIZON: a client that
-- retries billing writes from an outbox is covered as long as its usage events are. Rows past
-- it are dropped as parts merge, and storage/idempotency.py reads none of them before.
ALTER TABLE api_idempotency MODIFY TTL toDateTime(created_at) + INTERVAL 35 DAY
