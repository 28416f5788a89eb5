//! Batch rows (`batches`) and the jobs their lines become (tables: `migrations/20261215000001_batches.sql`).
//!
//! A batch is driven by one API instance at a time, the holder of its lease
//! (`lease_owner`, `lease_until`); every state change checks the lease, so an instance
//! that lost it changes nothing. Line `n` of batch `b` is job [`line_job_id`]`(b, n)`, and
//! `jobs (batch_id, batch_line)` is unique: whatever restarts, a line is one job.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sluice_schemas::batch::BatchStatus;
use sluice_schemas::{ErrorClass, JobStatus, Tier};
use sqlx::Row;
use uuid::Uuid;

use super::{Store, StoreError};

/// Batch statuses that still need a driver.
pub const ACTIVE: &str = "('validating','in_progress','finalizing','cancelling')";

/// The job id of line `line` (1-based) of batch `batch`: the batch's UUIDv7 with its last
/// 32 bits replaced by the line number. Deterministic, so re-ingesting a line after a
/// restart finds the same job (and JetStream drops the repeated `Nats-Msg-Id`); still a
/// valid v7 id ordered by the batch's creation time.
pub fn line_job_id(batch: Uuid, line: u32) -> Uuid {
    let mut bytes = *batch.as_bytes();
    bytes[12..16].copy_from_slice(&line.to_be_bytes());
    Uuid::from_bytes(bytes)
}

/// A batch as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: String,
    pub owner: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub tier: Tier,
    pub status: BatchStatus,
    pub metadata: Option<Value>,
    pub errors: Option<Value>,
    pub total: i32,
    pub ingested: i32,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub finalizing_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The creating request's trace context, continued by the jobs of its lines.
    pub traceparent: Option<String>,
    /// `live`, `native`, or `auto` until the driver settles it (`crate::native_batches`).
    pub mode: String,
}

const BATCH_COLUMNS: &str =
    "id, owner, endpoint, input_file_id, completion_window, tier, status, metadata,
    errors, total, ingested, output_file_id, error_file_id, created_at, expires_at, in_progress_at,
    finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at, traceparent, mode";

/// A batch being created.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: String,
    pub owner: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub tier: Tier,
    pub metadata: Option<Value>,
    pub expires_at: DateTime<Utc>,
    /// The creating request's `traceparent` (when traces are on).
    pub traceparent: Option<String>,
    pub mode: crate::native_batches::BatchMode,
}

/// How a batch's lines stand, by job status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LineCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub expired: i64,
}

impl LineCounts {
    pub fn unfinished(&self) -> i64 {
        self.queued + self.running
    }

    /// Lines that ended without a result.
    pub fn unsuccessful(&self) -> i64 {
        self.failed + self.cancelled + self.expired
    }
}

/// One line's job row, written before the line is published (or instead, for a line
/// that failed validation or was never run).
#[derive(Debug, Clone, Serialize)]
pub struct BatchJob {
    pub id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: Tier,
    pub status: JobStatus,
    pub metadata: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub batch_id: String,
    pub batch_line: i32,
    pub custom_id: String,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl BatchJob {
    /// Line `line` of `batch` as a queued job; its metadata names the batch and the
    /// line's `custom_id`.
    pub fn queued(
        batch: &BatchRow,
        id: Uuid,
        line: u32,
        tier: Tier,
        custom_id: String,
        model_group: String,
        now: DateTime<Utc>,
    ) -> Self {
        BatchJob {
            id,
            owner: batch.owner.clone(),
            model_group,
            tier,
            status: JobStatus::Queued,
            metadata: Some(serde_json::json!({"batch_id": batch.id, "custom_id": custom_id})),
            created_at: now,
            batch_id: batch.id.clone(),
            batch_line: line as i32,
            custom_id,
            error_class: None,
            error_message: None,
            finished_at: None,
        }
    }

    /// The same line refused before it ran: it ends `failed` at `now` with the refusal.
    pub fn refused(mut self, class: ErrorClass, message: String, now: DateTime<Utc>) -> Self {
        self.status = JobStatus::Failed;
        self.error_class = Some(class);
        self.error_message = Some(message);
        self.finished_at = Some(now);
        self
    }
}

/// A line's outcome, for the output and error files.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineResult {
    pub id: Uuid,
    pub batch_line: i32,
    pub custom_id: String,
    pub status: JobStatus,
    pub result: Option<Value>,
    /// The result when `jsonb` could not hold it (see [`crate::pgtext`]).
    pub result_text: Option<String>,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
}

/// The final state of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Cancelled,
    Expired,
}

impl Ending {
    /// The batch's status once it ended so.
    pub fn status(self) -> BatchStatus {
        match self {
            Ending::Completed => BatchStatus::Completed,
            Ending::Cancelled => BatchStatus::Cancelled,
            Ending::Expired => BatchStatus::Expired,
        }
    }

    /// The status of the lines it ends before they ran.
    pub fn line_status(self) -> JobStatus {
        match self {
            Ending::Expired => JobStatus::Expired,
            Ending::Completed | Ending::Cancelled => JobStatus::Cancelled,
        }
    }
}

impl Store {
    pub async fn insert_batch(&self, b: &NewBatch) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO batches (id, owner, endpoint, input_file_id, completion_window, tier, status,
                 metadata, expires_at, traceparent, mode)
             VALUES ($1, $2, $3, $4, $5, $6, 'validating', $7, $8, $9, $10)",
        )
        .bind(&b.id)
        .bind(&b.owner)
        .bind(&b.endpoint)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(b.tier)
        .bind(&b.metadata)
        .bind(b.expires_at)
        .bind(&b.traceparent)
        .bind(b.mode.as_str())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        Ok(sqlx::query_as::<_, BatchRow>(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Newest first, after `after` (a batch id; ids sort by creation time). `owner: None`
    /// lists everyone's.
    pub async fn list_batches(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BatchRow>, StoreError> {
        Ok(sqlx::query_as::<_, BatchRow>(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches
             WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(owner)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Counts a batch's lines by status (one index scan).
    pub async fn line_counts(&self, batch_id: &str) -> Result<LineCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n FROM jobs WHERE batch_id = $1 GROUP BY status",
        )
        .bind(batch_id)
        .fetch_all(self.pool())
        .await?;
        let mut c = LineCounts::default();
        for row in rows {
            let status: JobStatus = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            *match status {
                JobStatus::Queued => &mut c.queued,
                JobStatus::Running => &mut c.running,
                JobStatus::Succeeded => &mut c.succeeded,
                JobStatus::Failed => &mut c.failed,
                JobStatus::Cancelled => &mut c.cancelled,
                JobStatus::Expired => &mut c.expired,
            } += n;
        }
        Ok(c)
    }

    /// Lines of the batch waiting in the queue (deferred ones included).
    pub async fn queued_lines(&self, batch_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE batch_id = $1 AND status = 'queued'",
        )
        .bind(batch_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Asks for a batch to stop: `validating`/`in_progress` become `cancelling`. Returns
    /// the row as it is now either way (`None`: no such batch).
    pub async fn request_batch_cancel(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        sqlx::query(
            "UPDATE batches SET status = 'cancelling', cancelling_at = now()
             WHERE id = $1 AND status IN ('validating', 'in_progress')",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        self.batch(id).await
    }

    /// Takes the lease of up to `limit` active batches that nobody holds (or whose holder
    /// let it lapse), skipping `skip`. Returns their ids.
    pub async fn claim_batches(
        &self,
        holder: &str,
        lease: std::time::Duration,
        skip: &[String],
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "UPDATE batches SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
             WHERE id IN (
                 SELECT id FROM batches
                 WHERE status IN {ACTIVE} AND NOT (id = ANY($3))
                   AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1)
                 ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id"
        ))
        .bind(holder)
        .bind(lease.as_secs_f64())
        .bind(skip)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Extends the lease and returns the batch; `None` if the lease is no longer ours.
    pub async fn renew_batch(
        &self,
        id: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Option<BatchRow>, StoreError> {
        Ok(sqlx::query_as::<_, BatchRow>(&format!(
            "UPDATE batches SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND lease_owner = $2 RETURNING {BATCH_COLUMNS}"
        ))
        .bind(id)
        .bind(holder)
        .bind(lease.as_secs_f64())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Gives the lease up (on shutdown), so another instance takes over at once.
    pub async fn release_batch(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Validation passed: `total` request lines; `in_progress` (unless cancelled meanwhile).
    pub async fn batch_validated(
        &self,
        id: &str,
        holder: &str,
        total: u32,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET total = $3,
                 status = CASE WHEN status = 'validating' THEN 'in_progress' ELSE status END,
                 in_progress_at = CASE WHEN status = 'validating' THEN now() ELSE in_progress_at END
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(holder)
        .bind(total as i32)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The input file is unusable: `failed`, with OpenAI's `errors` list.
    pub async fn batch_failed(
        &self,
        id: &str,
        holder: &str,
        errors: &Value,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET status = 'failed', failed_at = now(), errors = $3,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(holder)
        .bind(errors)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records lines `..= ingested` as turned into jobs.
    pub async fn batch_ingested(
        &self,
        id: &str,
        holder: &str,
        ingested: u32,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET ingested = GREATEST(ingested, $3) WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(holder)
        .bind(ingested as i32)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every line has ended: `finalizing` while the output files are written.
    pub async fn batch_finalizing(&self, id: &str, holder: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET finalizing_at = COALESCE(finalizing_at, now()),
                 status = CASE WHEN status = 'in_progress' THEN 'finalizing' ELSE status END
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The batch is over; its files are written.
    pub async fn batch_ended(
        &self,
        id: &str,
        holder: &str,
        ending: Ending,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let stamp = match ending {
            Ending::Completed => "completed_at",
            Ending::Cancelled => "cancelled_at",
            Ending::Expired => "expired_at",
        };
        let done = sqlx::query(&format!(
            "UPDATE batches SET status = $3, {stamp} = now(), output_file_id = $4, error_file_id = $5,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2"
        ))
        .bind(id)
        .bind(holder)
        .bind(ending.status())
        .bind(output_file_id)
        .bind(error_file_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records line jobs; lines already recorded are left as they are.
    pub async fn insert_batch_jobs(&self, jobs: &[BatchJob]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO jobs (id, owner, model_group, tier, status, metadata, created_at, batch_id,
                  batch_line, custom_id, error_class, error_message, finished_at)
             SELECT id, owner, model_group, tier, status, metadata, created_at, batch_id, batch_line,
                  custom_id, error_class, error_message, finished_at
             FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, owner text, model_group text, tier text,
                  status text, metadata jsonb, created_at timestamptz, batch_id text, batch_line int,
                  custom_id text, error_class text, error_message text, finished_at timestamptz)
             ON CONFLICT DO NOTHING",
        )
        .bind(crate::pgtext::rows_param(jobs, &[])?)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Of `ids`, the jobs not yet published: still `queued`, never attempted, no stream
    /// sequence recorded. (After a restart, lines already running or done are skipped.)
    pub async fn unpublished(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = ANY($1) AND status = 'queued' AND attempts = 0
                 AND batch_seq IS NULL",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// Remembers where each published line sits in the jobs stream.
    pub async fn record_batch_seqs(&self, seqs: &[(Uuid, u64)]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = seqs.iter().map(|s| s.0).collect();
        let nums: Vec<i64> = seqs.iter().map(|s| s.1 as i64).collect();
        sqlx::query(
            "UPDATE jobs SET batch_seq = t.seq FROM unnest($1::uuid[], $2::bigint[]) AS t(id, seq)
             WHERE jobs.id = t.id",
        )
        .bind(&ids)
        .bind(&nums)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Ends the batch's lines still waiting (never published, in the queue, or deferred)
    /// as `status` (`cancelled` or `expired`); lines a worker has started are left to
    /// finish. Returns the ended lines' stream sequences (`None`: never published).
    pub async fn end_queued_lines(
        &self,
        batch_id: &str,
        status: JobStatus,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE jobs SET status = $2, finished_at = now(), not_before = NULL, updated_at = now()
             WHERE batch_id = $1 AND status = 'queued'
             RETURNING batch_seq",
        )
        .bind(batch_id)
        .bind(status)
        .fetch_all(self.pool())
        .await?)
    }

    /// Line outcomes after line `after`, in line order.
    pub async fn line_results(
        &self,
        batch_id: &str,
        after: i32,
        limit: i64,
    ) -> Result<Vec<LineResult>, StoreError> {
        Ok(sqlx::query_as::<_, LineResult>(
            "SELECT id, batch_line, custom_id, status, result, result_text, error_class, error_message
             FROM jobs WHERE batch_id = $1 AND batch_line > $2 ORDER BY batch_line LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|mut line: LineResult| {
            line.result = crate::pgtext::restore(line.result.take(), line.result_text.as_deref());
            line
        })
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_job_ids_are_distinct_deterministic_v7_ids() {
        let batch = Uuid::now_v7();
        let a = line_job_id(batch, 1);
        assert_eq!(a, line_job_id(batch, 1));
        assert_ne!(a, line_job_id(batch, 2));
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.as_bytes()[..12], batch.as_bytes()[..12]);
    }
}
