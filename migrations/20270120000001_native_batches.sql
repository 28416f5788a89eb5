-- Native provider batches (api/src/native.rs): a batch's lines can run through the
-- providers' own batch APIs instead of as live jobs.
--
-- `batches.mode` is what the batch asked for (`live`, `native`, `auto`) until the driver
-- plans it; then `live` or `native`. Each upstream batch the driver makes is a
-- `native_batches` row, recorded before anything is sent upstream, and each line job
-- names its upstream batch (`jobs.native_batch`). The upstream batch and file ids are
-- recorded as soon as the provider answers, so a restarted api resumes polling them and
-- never submits a group twice.

ALTER TABLE batches ADD COLUMN mode text NOT NULL DEFAULT 'live';
ALTER TABLE batches ADD CONSTRAINT batches_mode_known
    CHECK (mode IN ('live', 'native', 'auto')) NOT VALID;
ALTER TABLE batches VALIDATE CONSTRAINT batches_mode_known;

CREATE TABLE native_batches (
    -- `nb_<hex>`: ours, sent upstream as the batch's marker (metadata / display name).
    id               text        PRIMARY KEY,
    batch_id         text        NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    seq              integer     NOT NULL,
    deployment       text        NOT NULL,
    provider         text        NOT NULL,
    protocol         text        NOT NULL,
    lines            integer     NOT NULL,
    bytes            bigint      NOT NULL DEFAULT 0,
    -- pending: planned, nothing sent; submitting: the create call may have reached the
    -- provider; submitted: upstream_id known; ended: results mapped to the line jobs.
    state            text        NOT NULL,
    upstream_id      text,
    upstream_file_id text,
    -- The provider's last status, and what ended it (failed, expired, cancelled).
    upstream_status  text,
    error            text,
    -- Lines of this group re-run live after the upstream batch failed or expired.
    rerun_live       integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    submitted_at     timestamptz,
    ended_at         timestamptz,
    CONSTRAINT native_batches_state_known
        CHECK (state IN ('pending', 'submitting', 'submitted', 'ended'))
);
CREATE UNIQUE INDEX native_batches_batch_seq ON native_batches (batch_id, seq);

ALTER TABLE jobs ADD COLUMN native_batch text;
CREATE INDEX jobs_native_batch ON jobs (native_batch, status) WHERE native_batch IS NOT NULL;
