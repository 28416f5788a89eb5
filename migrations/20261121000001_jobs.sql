-- Jobs and the per-attempt ledger (DESIGN §7).

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    owner           text        NOT NULL DEFAULT 'master',
    idempotency_key text,
    model_group     text        NOT NULL,
    tier            text        NOT NULL,
    status          text        NOT NULL,
    reply_subject   text,
    metadata        jsonb,
    result          jsonb,
    usage           jsonb,
    cost            numeric(24, 12),
    pricing_missing boolean     NOT NULL DEFAULT false,
    attempts        integer     NOT NULL DEFAULT 0,
    error_class     text,
    error_message   text,
    not_before      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A repeat submission with the same Idempotency-Key from the same owner finds its job.
CREATE UNIQUE INDEX jobs_owner_idempotency_key
    ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status_created ON jobs (status, created_at);

-- One row per provider call, written when the call starts and completed when it ends, so
-- a call whose worker died is still on record (status stays 'started').
CREATE TABLE job_attempts (
    job_id                uuid        NOT NULL,
    attempt               integer     NOT NULL,
    delivery              integer     NOT NULL,
    worker                text        NOT NULL,
    deployment            text        NOT NULL,
    provider              text        NOT NULL,
    model                 text        NOT NULL,
    status                text        NOT NULL,
    error_class           text,
    error_message         text,
    prompt_tokens         bigint,
    completion_tokens     bigint,
    cached_tokens         bigint,
    cache_creation_tokens bigint,
    reasoning_tokens      bigint,
    usage_estimated       boolean     NOT NULL DEFAULT false,
    cost                  numeric(24, 12),
    pricing_missing       boolean     NOT NULL DEFAULT false,
    ttft_ms               double precision,
    latency_ms            double precision,
    started_at            timestamptz NOT NULL,
    finished_at           timestamptz,
    PRIMARY KEY (job_id, attempt)
);
