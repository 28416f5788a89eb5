-- The W3C `traceparent` of the request that created a batch (when traces are on), so the
-- jobs of its lines join that trace (api/src/batches.rs).
ALTER TABLE batches ADD COLUMN traceparent text;
