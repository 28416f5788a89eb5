//! Recording new jobs and reading them back: `GET /v1/jobs/{id}`, a redelivered job's
//! progress, cancelling.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sluice_schemas::job::JobError;
use sluice_schemas::{DoneEvent, ErrorClass, JobStatus, Tier};
use sqlx::Row;
use uuid::Uuid;

use super::{Store, StoreError, TERMINAL};

/// A new job as the API records it before publishing.
#[derive(Debug, Clone, Serialize)]
pub struct NewJob {
    pub id: Uuid,
    pub owner: String,
    pub idempotency_key: Option<String>,
    pub model_group: String,
    pub tier: Tier,
    pub reply_subject: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// Where the job's envelope is published, and the envelope: kept in the outbox until
    /// the publish is acknowledged (see [`Store::outbox_due`]).
    pub subject: Option<String>,
    /// Bound as it is (every column is an array of its own, see `core/src/store/arrays.rs`).
    #[serde(skip)]
    pub payload: Option<String>,
    /// The `x-request-id` of the request that submitted it.
    pub request_id: Option<String>,
    /// The submitting request's `traceparent` (when traces are on), kept with the outbox
    /// entry so that a republished job continues the trace.
    pub traceparent: Option<String>,
}

/// What recording a new job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now.
    New,
    /// The owner already submitted this idempotency key: here is that job.
    Existing(Uuid),
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: Tier,
    pub status: JobStatus,
    pub metadata: Option<Value>,
    pub result: Option<Value>,
    /// The result when `jsonb` could not hold it (see [`crate::pgtext`]).
    pub result_text: Option<String>,
    pub usage: Option<Value>,
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    /// Attempts made so far (attempt numbers are `u32` everywhere; the column is `int`).
    #[sqlx(try_from = "i32")]
    pub attempts: u32,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Answered from the response cache (read by [`Store::job`] only).
    #[sqlx(default)]
    pub cache_hit: bool,
    /// What the calls the cache replaced cost (read by [`Store::job`] only).
    #[sqlx(default)]
    pub cost_saved: Option<Decimal>,
    /// The `x-request-id` of the request that submitted it (read by [`Store::job`] only).
    #[sqlx(default)]
    pub request_id: Option<String>,
}

impl JobRow {
    /// The job's terminal event, rebuilt from its row.
    pub fn done_event(&self) -> DoneEvent {
        let error = self.error_class.map(|class| JobError {
            class,
            message: self.error_message.clone().unwrap_or_default(),
        });
        DoneEvent {
            job_id: self.id,
            status: self.status,
            result: self
                .result
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            usage: self
                .usage
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            cost: self.cost,
            attempts: self.attempts,
            error,
        }
    }
}

/// Where a redelivered job stands.
#[derive(Debug, Clone, Copy)]
pub struct JobProgress {
    pub terminal: bool,
    /// Provider calls so far (the last attempt number allocated).
    pub calls: u32,
    /// Times the job handed its message back to wait for a limit.
    pub deferrals: u32,
    /// Deliveries whose call was cut short: their worker died (or stalls) mid-call, its
    /// attempt row still `started`.
    pub cut_short: u32,
}

impl Store {
    /// Records new jobs; a repeated idempotency key yields the existing job instead.
    pub async fn record_new_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Recorded>, StoreError> {
        self.record_new_jobs_and_published(jobs, &[]).await
    }

    /// [`Store::record_new_jobs`], and in the same statement what
    /// [`Store::outbox_published`] does for `published` (earlier jobs whose publish was
    /// acknowledged meanwhile): the api's outbox upkeep rides on the inserts it makes
    /// anyway instead of taking a statement of its own per job (`api/src/outbox.rs`).
    pub async fn record_new_jobs_and_published(
        &self,
        jobs: &[NewJob],
        published: &[(Uuid, u64)],
    ) -> Result<Vec<Recorded>, StoreError> {
        use super::arrays::{column, opt_json, opt_text, put, stamp, text, try_column};
        let (ids, seqs) = super::outbox::published_params(published);
        let mut args = sqlx::postgres::PgArguments::default();
        let (a, js) = (&mut args, jobs);
        column(a, js, |j| j.id)?;
        column(a, js, |j| text(&j.owner))?;
        column(a, js, |j| opt_text(j.idempotency_key.as_deref()))?;
        column(a, js, |j| text(&j.model_group))?;
        column(a, js, |j| j.tier.as_str())?;
        column(a, js, |j| opt_text(j.reply_subject.as_deref()))?;
        try_column(a, js, |j| opt_json(j.metadata.as_ref()))?;
        column(a, js, |j| stamp(&j.created_at))?;
        column(a, js, |j| opt_text(j.subject.as_deref()))?;
        column(a, js, |j| opt_text(j.request_id.as_deref()))?;
        column(a, js, |j| opt_text(j.traceparent.as_deref()))?;
        column(a, js, |j| j.payload.as_deref())?;
        put(a, &ids)?;
        put(a, &seqs)?;
        // The job row and its outbox entry in one statement: a job is never recorded
        // without the envelope that lets a reconciler publish it. The published jobs'
        // sequences go to `job_stream_seqs`, not to their job rows: no job row a worker
        // may be claiming is locked here (see `outbox_published`). Rows are inserted in
        // key order, so two of these statements (the api runs several at once) never
        // wait on each other in opposite orders.
        let inserted: Vec<Uuid> = sqlx::query_scalar_with(
            "WITH input AS (
                SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::text[])
                AS t(id, owner, idempotency_key, model_group, tier, reply_subject, metadata, created_at,
                     subject, request_id, traceparent, payload)
             ), inserted AS (
                INSERT INTO jobs (id, owner, idempotency_key, model_group, tier, status, reply_subject, metadata, created_at, request_id)
                SELECT id, owner, idempotency_key, model_group, tier, 'queued', reply_subject, metadata::jsonb, created_at, request_id
                FROM input ORDER BY owner, idempotency_key, id
                ON CONFLICT DO NOTHING
                RETURNING id
             ), outbox AS (
                INSERT INTO job_outbox (job_id, subject, payload, traceparent)
                SELECT i.id, i.subject, i.payload, i.traceparent FROM input i
                WHERE i.subject IS NOT NULL AND i.payload IS NOT NULL AND i.id IN (SELECT id FROM inserted)
                ON CONFLICT DO NOTHING
             ), published AS (
                SELECT * FROM unnest($13::uuid[], $14::bigint[]) AS p(id, seq)
             ), gone AS (
                DELETE FROM job_outbox WHERE job_id = ANY($13::uuid[])
             ), sequenced AS (
                INSERT INTO job_stream_seqs (job_id, seq) SELECT id, seq FROM published ORDER BY id
                ON CONFLICT (job_id) DO UPDATE SET seq = EXCLUDED.seq
             )
             SELECT id FROM inserted",
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            if inserted.contains(&job.id) {
                out.push(Recorded::New);
                continue;
            }
            let Some(key) = &job.idempotency_key else {
                // Same id already recorded: nothing new to do.
                out.push(Recorded::Existing(job.id));
                continue;
            };
            let existing: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM jobs WHERE owner = $1 AND idempotency_key = $2")
                    .bind(&job.owner)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
            out.push(match existing {
                Some(id) if id != job.id => Recorded::Existing(id),
                _ => Recorded::New,
            });
        }
        Ok(out)
    }

    /// The class and message of the job's last failed call, if any.
    pub async fn last_error(&self, id: Uuid) -> Result<Option<(String, String)>, StoreError> {
        Ok(sqlx::query_as::<_, (String, String)>(
            "SELECT error_class, COALESCE(error_message, '') FROM job_attempts
             WHERE job_id = $1 AND error_class IS NOT NULL ORDER BY attempt DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A job as `GET /v1/jobs/{id}` shows it, its result restored from text if `jsonb`
    /// could not hold it.
    pub async fn job(&self, id: Uuid) -> Result<Option<JobRow>, StoreError> {
        Ok(sqlx::query_as::<_, JobRow>(
            "SELECT id, owner, model_group, tier, status, metadata, result, result_text, usage, cost,
                    pricing_missing, attempts, error_class, error_message, not_before, created_at, started_at,
                    finished_at, cache_hit, cost_saved, request_id
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|mut row: JobRow| {
            row.result = crate::pgtext::restore(row.result.take(), row.result_text.as_deref());
            row
        }))
    }

    /// For a redelivered job: is it already finished, and how many attempts are on record?
    pub async fn job_progress(&self, id: Uuid) -> Result<JobProgress, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT COALESCE(j.status IN {TERMINAL}, false) AS terminal,
                    GREATEST(COALESCE(j.calls, 0),
                             COALESCE((SELECT max(attempt) FROM job_attempts WHERE job_id = $1), 0)) AS calls,
                    COALESCE(j.deferrals, 0) AS deferrals,
                    (SELECT count(DISTINCT delivery)::int FROM job_attempts
                      WHERE job_id = $1 AND status = 'started') AS cut_short
             FROM (SELECT 1) AS one LEFT JOIN jobs j ON j.id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(JobProgress {
            terminal: row.try_get("terminal")?,
            calls: u32::try_from(row.try_get::<i32, _>("calls")?).unwrap_or(0),
            deferrals: u32::try_from(row.try_get::<i32, _>("deferrals")?).unwrap_or(0),
            cut_short: u32::try_from(row.try_get::<i32, _>("cut_short")?).unwrap_or(0),
        })
    }

    /// Marks a job that has not finished as cancelled; `false` if it already finished.
    pub async fn cancel_job(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
             WHERE id = $1 AND status NOT IN {TERMINAL}"
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
