-- Backfill is deliberate. A subscription created with `backfill: true` has its periods that
-- ended before it was received rated (otherwise only BASTIONARY_RATING_BACKFILL does that);
-- an invoice such a backfill issued says `backfill: true`, and dunning leaves its receivable
-- alone unless BASTIONARY_DUNNING_BACKFILL is set.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS backfill UInt8 DEFAULT 0;
ALTER TABLE receivables ADD COLUMN IF NOT EXISTS backfill UInt8 DEFAULT 0;
