-- Durable deliveries of a job's end (issue 13): its webhook POST and its reply-subject
-- message, written with the job's result in one transaction and worked off by every
-- worker (worker/src/deliveries.rs), so a worker's death loses none.
CREATE TABLE job_deliveries (
    id          bigserial   PRIMARY KEY,
    job_id      uuid        NOT NULL,
    -- 'webhook' (target: the URL) or 'reply' (target: the NATS subject).
    kind        text        NOT NULL,
    target      text        NOT NULL,
    body        text        NOT NULL,
    -- 'pending' until 'delivered' or 'failed' (tries ran out).
    status      text        NOT NULL DEFAULT 'pending',
    attempts    integer     NOT NULL DEFAULT 0,
    -- When the next try is due; a worker claiming a try moves it past its own lease.
    next_at     timestamptz NOT NULL DEFAULT now(),
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (job_id, kind)
);
CREATE INDEX job_deliveries_due ON job_deliveries (next_at) WHERE status = 'pending';
