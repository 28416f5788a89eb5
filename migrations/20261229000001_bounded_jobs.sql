-- Every job ends, nothing is lost, nothing is paid twice (issue 13).

-- Provider calls of the job so far, across all its deliveries. Each call's attempt number
-- is allocated here, under the claim of the job row, so two deliveries of one job never
-- share an attempt number and the count bounds the calls a job may make.
ALTER TABLE jobs ADD COLUMN calls integer NOT NULL DEFAULT 0;
-- Times the job handed its message back to wait for a limit (each one is a delivery that
-- is not a worker's failure).
ALTER TABLE jobs ADD COLUMN deferrals integer NOT NULL DEFAULT 0;
UPDATE jobs SET calls = COALESCE((SELECT max(attempt) FROM job_attempts a WHERE a.job_id = jobs.id), 0);

-- The outbox of submissions: the envelope of a job recorded by the api, until its publish
-- is acknowledged. A row left here (the api died, or the ack was lost) is published again
-- by a worker's reconciler under the same Nats-Msg-Id.
CREATE TABLE job_outbox (
    job_id     uuid        PRIMARY KEY,
    subject    text        NOT NULL,
    payload    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The USD a call reserved against budgets when it started: a call in flight when Redis
-- lost its counters is reserved again from here (worker/src/limits/seed.lua).
ALTER TABLE job_attempts ADD COLUMN reserved_cost numeric(24, 12);
