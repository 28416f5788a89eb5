-- Jobs whose queue message is gone (issue 13): the JetStream sequence of the job's
-- message, recorded when its publish was acknowledged (with the removal of its outbox
-- entry), so a worker's reconciler (worker/src/reconcile.rs) can tell a message waiting
-- in a long backlog from one that was purged, expired or lost with a NATS node's data.
-- NULL: not known (rows from before this migration, jobs published straight to NATS);
-- such rows are never ended by the reconciler.
ALTER TABLE jobs ADD COLUMN stream_seq bigint;
-- When a reconciler last looked for the job's message: workers take turns, and a job is
-- looked at most once per grace period.
ALTER TABLE jobs ADD COLUMN seq_checked_at timestamptz;
CREATE INDEX jobs_unfinished_updated ON jobs (updated_at) WHERE status IN ('queued', 'running');
