-- Job status, tier and error class are closed sets: the Rust enums `JobStatus`, `Tier`
-- and `ErrorClass` (schemas/src/) read these columns, and the database refuses any other
-- value, so a read never has to guess. A new class or status needs a migration that
-- widens the matching constraint.
--
-- NOT VALID, then VALIDATE: adding the constraint does not lock writers while the
-- existing rows are checked.

ALTER TABLE jobs ADD CONSTRAINT jobs_status_known
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')) NOT VALID;
ALTER TABLE jobs ADD CONSTRAINT jobs_tier_known
    CHECK (tier IN ('critical', 'high', 'normal', 'low')) NOT VALID;
ALTER TABLE jobs ADD CONSTRAINT jobs_error_class_known
    CHECK (error_class IS NULL OR error_class IN (
        'rate_limit', 'overloaded', 'timeout', 'server', 'connection', 'context_window',
        'content_policy', 'auth', 'bad_request', 'not_found', 'truncated_stream', 'internal',
        'wait_exceeded', 'deliveries_exhausted')) NOT VALID;
ALTER TABLE job_attempts ADD CONSTRAINT job_attempts_status_known
    CHECK (status IN ('started', 'succeeded', 'failed')) NOT VALID;
ALTER TABLE job_attempts ADD CONSTRAINT job_attempts_error_class_known
    CHECK (error_class IS NULL OR error_class IN (
        'rate_limit', 'overloaded', 'timeout', 'server', 'connection', 'context_window',
        'content_policy', 'auth', 'bad_request', 'not_found', 'truncated_stream', 'internal',
        'wait_exceeded', 'deliveries_exhausted')) NOT VALID;

ALTER TABLE jobs VALIDATE CONSTRAINT jobs_status_known;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_tier_known;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_error_class_known;
ALTER TABLE job_attempts VALIDATE CONSTRAINT job_attempts_status_known;
ALTER TABLE job_attempts VALIDATE CONSTRAINT job_attempts_error_class_known;
