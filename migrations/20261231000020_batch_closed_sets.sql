-- A batch's status and tier are closed sets too: the Rust enums `BatchStatus`
-- (schemas/src/batch.rs) and `Tier` (schemas/src/envelope.rs) read these columns, and the
-- database refuses any other value. A batch line is a job row, whose status, tier and
-- error class `20261231000010_closed_sets.sql` already holds; an attempt's status too.
--
-- NOT VALID, then VALIDATE: adding the constraint does not lock writers while the
-- existing rows are checked.

ALTER TABLE batches ADD CONSTRAINT batches_status_known
    CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed',
                      'expired', 'cancelling', 'cancelled')) NOT VALID;
ALTER TABLE batches ADD CONSTRAINT batches_tier_known
    CHECK (tier IN ('critical', 'high', 'normal', 'low')) NOT VALID;

ALTER TABLE batches VALIDATE CONSTRAINT batches_status_known;
ALTER TABLE batches VALIDATE CONSTRAINT batches_tier_known;
