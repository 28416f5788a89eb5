//! The outbox: a job's envelope kept beside its row until JetStream acknowledges the
//! publish, so an api that dies between the two loses no job.

use std::time::Duration;

use uuid::Uuid;

use super::{Store, StoreError, TERMINAL};

/// A job envelope recorded but not known to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub job_id: Uuid,
    pub subject: String,
    pub payload: String,
    /// The submitting request's `traceparent`, when traces were on.
    pub traceparent: Option<String>,
}

/// `(job, stream sequence)` pairs as the two arrays the outbox statements bind.
pub(super) fn published_params(published: &[(Uuid, u64)]) -> (Vec<Uuid>, Vec<i64>) {
    published
        .iter()
        .map(|&(id, seq)| (id, i64::try_from(seq).unwrap_or(i64::MAX)))
        .unzip()
}

impl Store {
    /// Drops the outbox entries of jobs whose publish JetStream acknowledged, and records
    /// where each message sits in the jobs stream (its sequence, in `job_stream_seqs`), in
    /// one statement: the reconciler (`worker/src/reconcile.rs`) ends jobs whose message is
    /// gone from there. No job row is locked: a worker claiming the job meanwhile neither
    /// waits for this nor deadlocks with it (`migrations/20270201000001_job_stream_seqs.sql`).
    ///
    /// The entries are deleted by `job_id = ANY(ids)`, here and in
    /// `Store::record_new_jobs_and_published`: a semi-join with the ids let the planner
    /// scan the whole outbox instead (it holds few live rows but, between vacuums, many
    /// pages of dead ones: every job's entry is inserted and deleted within moments), and
    /// that scan took about a tenth of Postgres' CPU in the throughput benchmark.
    pub async fn outbox_published(&self, published: &[(Uuid, u64)]) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let (ids, seqs) = published_params(published);
        sqlx::query(
            "WITH input AS (
                SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS t(id, seq)
             ), gone AS (
                DELETE FROM job_outbox WHERE job_id = ANY($1::uuid[])
             )
             INSERT INTO job_stream_seqs (job_id, seq) SELECT id, seq FROM input ORDER BY id
             ON CONFLICT (job_id) DO UPDATE SET seq = EXCLUDED.seq",
        )
        .bind(&ids)
        .bind(&seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Outbox entries older than `age` (their api died or lost the ack): those whose job
    /// is still queued and never called, among the oldest `limit`. Entries among those of
    /// jobs that moved on are dropped.
    ///
    /// One statement, driven from the outbox's oldest entries: each one's job is read by
    /// key, in a subquery per entry (a join could be planned as a hash of all of `jobs`).
    /// Every worker runs this every few seconds and `jobs` only grows; the join of the
    /// whole outbox this replaces did hash all of `jobs` whenever the outbox's statistics
    /// held more entries than were left (after the benchmark's throughput runs, 68 ms a
    /// sweep; `tests/outbox.rs`).
    pub async fn outbox_due(
        &self,
        age: Duration,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let age = age.as_secs_f64();
        Ok(sqlx::query_as::<_, OutboxRow>(&format!(
            "WITH entries AS MATERIALIZED (
                SELECT job_id, subject, payload, traceparent, created_at,
                       (SELECT j.status IN {TERMINAL} OR j.calls > 0 FROM jobs j WHERE j.id = o.job_id)
                           AS moved_on
                FROM job_outbox o
                WHERE created_at < now() - make_interval(secs => $1)
                ORDER BY created_at LIMIT $2
             ), gone AS (
                DELETE FROM job_outbox WHERE job_id IN (SELECT job_id FROM entries WHERE moved_on)
             )
             SELECT job_id, subject, payload, traceparent FROM entries
             WHERE NOT moved_on ORDER BY created_at"
        ))
        .bind(age)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
