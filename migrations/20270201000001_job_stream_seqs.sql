-- Where each published job's message sits in the jobs stream, recorded when its publish is
-- acknowledged (with the removal of its outbox entry; core/src/store/outbox.rs). Kept
-- beside the job row instead of in `jobs.stream_seq`: writing it then needed the job
-- row's lock just when a worker claims the job, and the api's job inserts (which carry
-- these writes) and the workers' ledger writes waited on, and deadlocked with, each
-- other. Insert-only, no foreign key: it locks no job row. The reconciler
-- (worker/src/reconcile.rs) reads it before `jobs.stream_seq` (rows recorded before this
-- table) and `jobs.batch_seq`.
CREATE TABLE job_stream_seqs (
    job_id uuid   PRIMARY KEY,
    seq    bigint NOT NULL
);
