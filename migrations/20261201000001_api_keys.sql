-- Virtual keys (DESIGN §7, §8). Only the SHA-256 of a key is stored; the key itself is
-- shown once, when it is created. `id` is what jobs record as their owner.

CREATE TABLE api_keys (
    id                    text        PRIMARY KEY,
    key_hash              text        NOT NULL UNIQUE,
    -- The key's last four characters, so people can tell their keys apart.
    hint                  text        NOT NULL,
    name                  text,
    models                text[]      NOT NULL DEFAULT '{}',
    rpm_limit             bigint,
    tpm_limit             bigint,
    max_parallel_requests bigint,
    max_budget            numeric(24, 12),
    budget_duration       text,
    metadata              jsonb,
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz,
    revoked_at            timestamptz
);
