-- An outbox entry's payload (the job's envelope, prompt included) lives for moments: it is
-- inserted with the job and deleted when JetStream acknowledges the publish
-- (api/src/outbox.rs). Compressing the larger ones with pglz took about 5% of Postgres'
-- CPU in the throughput benchmark; lz4 compresses them several times faster. Where the
-- server has no lz4 (built without it), the payload keeps the default compression.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE job_outbox ALTER COLUMN payload SET COMPRESSION lz4';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'job_outbox.payload keeps the default compression: %', SQLERRM;
END
$$;
