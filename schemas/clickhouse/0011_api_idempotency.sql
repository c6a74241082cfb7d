-- The first request of each Idempotency-Key of the billing write API: a retry republishes
-- the very event stored here; a reuse of the key with another body is refused.
CREATE TABLE IF NOT EXISTS api_idempotency
(
    key_name        String,  -- the API key's name: keys do not share idempotency keys
    path            String,
    idempotency_key String,
    body_digest     String,  -- hex SHA-256 of the request's data, keys sorted
    event_id        String,
    value           String,  -- the CloudEvent published
    created_at      DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (key_name, path, idempotency_key, created_at)
