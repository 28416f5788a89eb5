-- Files and batches (DESIGN §7, §8; OpenAI Batch API shapes). File bodies live in
-- Postgres in chunks (256 KiB), so neither an upload nor a download holds a whole
-- file in memory. Each batch line becomes a job whose id is derived from the batch id and
-- the line number; the job row carries its batch, line and custom_id.

CREATE TABLE files (
    id          text        PRIMARY KEY,
    owner       text        NOT NULL,
    purpose     text        NOT NULL,
    filename    text        NOT NULL,
    bytes       bigint      NOT NULL DEFAULT 0,
    lines       integer     NOT NULL DEFAULT 0,
    -- 'uploading' until the last chunk is stored; only 'processed' files are visible.
    status      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_owner_created ON files (owner, created_at);

CREATE TABLE file_chunks (
    file_id text    NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    data    bytea   NOT NULL,
    PRIMARY KEY (file_id, seq)
);

CREATE TABLE batches (
    id                text        PRIMARY KEY,
    owner             text        NOT NULL,
    endpoint          text        NOT NULL,
    input_file_id     text        NOT NULL,
    completion_window text        NOT NULL,
    tier              text        NOT NULL,
    status            text        NOT NULL,
    metadata          jsonb,
    errors            jsonb,
    -- Request lines in the input file (known once validated) and lines turned into jobs.
    total             integer     NOT NULL DEFAULT 0,
    ingested          integer     NOT NULL DEFAULT 0,
    output_file_id    text,
    error_file_id     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    in_progress_at    timestamptz,
    finalizing_at     timestamptz,
    completed_at      timestamptz,
    failed_at         timestamptz,
    expired_at        timestamptz,
    cancelling_at     timestamptz,
    cancelled_at      timestamptz,
    -- The API instance driving the batch, until when.
    lease_owner       text,
    lease_until       timestamptz
);
CREATE INDEX batches_owner_id ON batches (owner, id);
CREATE INDEX batches_active ON batches (created_at)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

ALTER TABLE jobs ADD COLUMN batch_id text;
ALTER TABLE jobs ADD COLUMN batch_line integer;
ALTER TABLE jobs ADD COLUMN custom_id text;
-- The JetStream sequence of the line's message, so a cancel can take back queued lines.
ALTER TABLE jobs ADD COLUMN batch_seq bigint;
CREATE UNIQUE INDEX jobs_batch_line ON jobs (batch_id, batch_line) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_batch_status ON jobs (batch_id, status) WHERE batch_id IS NOT NULL;
