-- The W3C `traceparent` of the request that submitted a job (when traces are on), kept
-- with its outbox entry: a job the reconciler publishes again (worker/src/reconcile.rs)
-- continues that trace instead of starting a new one.
ALTER TABLE job_outbox ADD COLUMN traceparent text;
