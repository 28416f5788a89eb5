-- When the create call of a native upstream batch (api/src/native.rs) began: a restarted
-- api looks for the batch that call may have made among those the provider created since
-- (Anthropic keeps no marker of ours to look it up by).
ALTER TABLE native_batches ADD COLUMN submitting_at timestamptz;
