-- The response cache (worker/src/cache.rs): a job answered from the cache made no call,
-- costs 0 and records what the call it replaced cost.
ALTER TABLE jobs ADD COLUMN cache_hit boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN cost_saved numeric(24, 12);
