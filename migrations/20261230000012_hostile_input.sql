-- A result Postgres' jsonb cannot hold (a string with U+0000 in it) is kept losslessly as
-- its JSON text instead; `result` stays NULL for that job (see core/src/pgtext.rs).
ALTER TABLE jobs ADD COLUMN result_text text;

-- Job envelopes larger than the NATS server's max_payload travel by reference: the
-- envelope is kept here and the message carries only its job id (see core/src/bodies.rs).
CREATE TABLE job_bodies (
    job_id     uuid PRIMARY KEY,
    body       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
