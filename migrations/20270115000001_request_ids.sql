-- The `x-request-id` of the API request that submitted a job (api/src/access.rs), so a
-- job can be found from a client's or a proxy's log line, and back.
ALTER TABLE jobs ADD COLUMN request_id text;
CREATE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;
