-- The fingerprint (Kafka timestamp, key and value digest) of each flush's last record: the
-- anchor a worker checks the broker against before trusting offsets (see metering/logs.py).
-- 0 in rows written before it existed: such an anchor is trusted as it was.
ALTER TABLE ingest_progress ADD COLUMN IF NOT EXISTS last_fingerprint UInt64 DEFAULT 0
