//! Postgres: the pool, migrations, and every statement Sluice runs (DESIGN §7).
//!
//! Hot-path writes take whole batches (see [`crate::group_commit`]) and pass them as one JSON
//! parameter expanded with `jsonb_to_recordset`, so a batch of any size is one statement
//! per table. Reads use runtime queries, so building never needs a database.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sluice_schemas::job::JobError;
use sluice_schemas::{DoneEvent, ErrorClass, JobStatus};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use sqlx::Row;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(String),
    #[error("database is not migrated ({0}); run `sluice migrate`")]
    NotMigrated(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("cannot encode rows: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<StoreError> for crate::group_commit::FlushError {
    /// Data Postgres refuses (class 22, data exception; class 23, integrity; class 54,
    /// program limit) or cannot encode is permanent: the same rows will be refused again.
    fn from(e: StoreError) -> Self {
        let permanent = match &e {
            StoreError::Encode(_) => true,
            StoreError::Query(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
            _ => false,
        };
        crate::group_commit::FlushError {
            message: e.to_string(),
            permanent,
        }
    }
}

/// A new job as the API records it before publishing.
#[derive(Debug, Clone, Serialize)]
pub struct NewJob {
    pub id: Uuid,
    pub owner: String,
    pub idempotency_key: Option<String>,
    pub model_group: String,
    pub tier: String,
    pub reply_subject: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// What recording a new job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The owner already submitted this idempotency key: here is that job.
    Existing(Uuid),
}

/// The worker's note that an attempt is starting: the job is running, a call is being made.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptStarted {
    pub job_id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: String,
    pub reply_subject: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempt: u32,
    pub delivery: u32,
    pub worker: String,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    pub started_at: DateTime<Utc>,
}

/// One provider call, finished.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub job_id: Uuid,
    pub attempt: u32,
    pub delivery: u32,
    pub worker: String,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    pub status: String,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub cache_creation_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub usage_estimated: bool,
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    pub ttft_ms: Option<f64>,
    pub latency_ms: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Parameters dropped because the provider cannot take them (`drop_params: true`).
    pub dropped_params: Option<Vec<String>>,
}

/// A job's terminal state.
#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    pub id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: String,
    pub reply_subject: Option<String>,
    pub created_at: DateTime<Utc>,
    pub status: String,
    pub result: Option<Value>,
    pub usage: Option<Value>,
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    pub attempts: u32,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub finished_at: DateTime<Utc>,
}

/// One entry of the worker's ledger.
#[derive(Debug, Clone)]
pub enum LedgerEntry {
    Started(AttemptStarted),
    /// Attempts that ended without ending the job (it was deferred).
    Attempts(Vec<AttemptRecord>),
    /// The job waits for a limit: back to `queued` until `not_before`.
    Deferred(JobDeferred),
    /// How the job's webhook delivery ended.
    Webhook(WebhookOutcome),
    Finished {
        job: JobOutcome,
        attempts: Vec<AttemptRecord>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookOutcome {
    pub id: Uuid,
    pub status: String,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobDeferred {
    pub id: Uuid,
    pub not_before: DateTime<Utc>,
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: String,
    pub status: String,
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
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    /// The job's terminal event, rebuilt from its row.
    pub fn done_event(&self) -> DoneEvent {
        let error = self.error_class.as_ref().map(|c| JobError {
            class: serde_json::from_value(Value::String(c.clone())).unwrap_or(ErrorClass::Internal),
            message: self.error_message.clone().unwrap_or_default(),
        });
        DoneEvent {
            job_id: self.id,
            status: JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed),
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

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    #[sqlx(try_from = "i32")]
    pub attempt: u32,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    pub status: String,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub usage_estimated: bool,
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    pub ttft_ms: Option<f64>,
    pub latency_ms: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub dropped_params: Option<sqlx::types::Json<Vec<String>>>,
}

/// Where a redelivered job stands.
#[derive(Debug, Clone, Copy)]
pub struct JobProgress {
    pub terminal: bool,
    pub last_attempt: u32,
}

const TERMINAL: &str = "('succeeded','failed','cancelled','expired')";

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// A pool without a statement timeout (`sluice migrate`, tests).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_with(url, max_connections, None).await
    }

    /// A pool whose every statement is cancelled by Postgres after `statement_timeout`,
    /// so no query can hold a connection (and the requests queued behind it) for ever.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        statement_timeout: Option<Duration>,
    ) -> Result<Store, StoreError> {
        let mut options: sqlx::postgres::PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Connect(e.to_string()))?;
        if let Some(t) = statement_timeout {
            options = options.options([("statement_timeout", t.as_millis().max(1).to_string())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))
    }

    /// Refuses to serve on a database that lacks this build's migrations.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(v) => v,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                    return Err(StoreError::NotMigrated("no migrations applied".into()))
                }
                Err(e) => return Err(e.into()),
            };
        for m in MIGRATOR.iter() {
            if !applied.contains(&m.version) {
                return Err(StoreError::NotMigrated(format!(
                    "missing {} {}",
                    m.version, m.description
                )));
            }
        }
        Ok(())
    }

    /// Records new jobs; a repeated idempotency key yields the existing job instead.
    pub async fn record_new_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Recorded>, StoreError> {
        let rows = crate::pgtext::rows_param(jobs, &[])?;
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO jobs (id, owner, idempotency_key, model_group, tier, status, reply_subject, metadata, created_at)
             SELECT id, owner, idempotency_key, model_group, tier, 'queued', reply_subject, metadata, created_at
             FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, owner text, idempotency_key text, model_group text,
                  tier text, reply_subject text, metadata jsonb, created_at timestamptz)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(rows)
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

    /// Removes a job that was recorded but could not be enqueued.
    pub async fn forget_job(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "WITH gone AS (DELETE FROM jobs WHERE id = $1 AND status = 'queued' RETURNING id)
             DELETE FROM job_bodies WHERE job_id IN (SELECT id FROM gone)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn job(&self, id: Uuid) -> Result<Option<JobRow>, StoreError> {
        Ok(sqlx::query_as::<_, JobRow>(
            "SELECT id, owner, model_group, tier, status, metadata, result, result_text, usage, cost,
                    pricing_missing, attempts, error_class, error_message, not_before, created_at, started_at,
                    finished_at
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

    pub async fn attempts(&self, job_id: Uuid) -> Result<Vec<AttemptRow>, StoreError> {
        Ok(sqlx::query_as::<_, AttemptRow>(
            "SELECT attempt, deployment, provider, model, status, error_class, error_message, prompt_tokens,
                    completion_tokens, cached_tokens, reasoning_tokens, usage_estimated, cost, pricing_missing,
                    ttft_ms, latency_ms, started_at, finished_at, dropped_params
             FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// For a redelivered job: is it already finished, and how many attempts are on record?
    pub async fn job_progress(&self, id: Uuid) -> Result<JobProgress, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT COALESCE((SELECT status IN {TERMINAL} FROM jobs WHERE id = $1), false) AS terminal,
                    COALESCE((SELECT max(attempt) FROM job_attempts WHERE job_id = $1), 0) AS last_attempt"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(JobProgress {
            terminal: row.try_get("terminal")?,
            last_attempt: u32::try_from(row.try_get::<i32, _>("last_attempt")?).unwrap_or(0),
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

    /// Writes a batch of ledger entries in one transaction, four statements at most.
    /// Returns the jobs whose `Started` entry was refused because the job had already
    /// ended (cancelled or expired by the api): their worker must not call the provider.
    pub async fn write_ledger(&self, entries: &[LedgerEntry]) -> Result<HashSet<Uuid>, StoreError> {
        let mut started: Vec<&AttemptStarted> = Vec::new();
        let mut finished_jobs: Vec<&JobOutcome> = Vec::new();
        let mut finished_attempts: Vec<&AttemptRecord> = Vec::new();
        let mut deferred: Vec<&JobDeferred> = Vec::new();
        let mut webhooks: Vec<&WebhookOutcome> = Vec::new();
        for entry in entries {
            match entry {
                LedgerEntry::Started(s) => started.push(s),
                LedgerEntry::Attempts(a) => finished_attempts.extend(a.iter()),
                LedgerEntry::Deferred(d) => deferred.push(d),
                LedgerEntry::Webhook(w) => webhooks.push(w),
                LedgerEntry::Finished { job, attempts } => {
                    finished_jobs.push(job);
                    finished_attempts.extend(attempts.iter());
                }
            }
        }
        // One row per key per statement: ON CONFLICT DO UPDATE cannot touch a row twice.
        dedup_last(&mut started, |s| (s.job_id, s.attempt));
        dedup_last(&mut finished_jobs, |j| (j.id, 0));
        dedup_last(&mut finished_attempts, |a| (a.job_id, a.attempt));
        dedup_last(&mut deferred, |d| (d.id, 0));

        // One statement runs on its own (one round trip); more share a transaction.
        let finished = !finished_jobs.is_empty() || !finished_attempts.is_empty();
        let statements = [
            !started.is_empty(),
            finished,
            !deferred.is_empty(),
            !webhooks.is_empty(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        let mut tx = None;
        let mut solo = None;
        let conn: &mut PgConnection = if statements > 1 {
            &mut *tx.insert(self.pool.begin().await?)
        } else {
            &mut *solo.insert(self.pool.acquire().await?)
        };
        let mut refused = HashSet::new();
        if !started.is_empty() {
            let mut jobs = started.clone();
            dedup_last(&mut jobs, |s| (s.job_id, 0));
            // The job row is the arbiter between a worker starting a job and the api
            // ending it (cancel, batch expiry): a job already ended is not claimed, and
            // no attempt row is written for it.
            let claimed: Vec<Uuid> = sqlx::query_scalar(&format!(
                "WITH claimed AS (
                    INSERT INTO jobs (id, owner, model_group, tier, status, reply_subject, created_at, started_at, attempts)
                    SELECT job_id, owner, model_group, tier, 'running', reply_subject, created_at, started_at, attempt
                    FROM jsonb_to_recordset($1::jsonb) AS t(job_id uuid, owner text, model_group text, tier text,
                         reply_subject text, created_at timestamptz, started_at timestamptz, attempt int)
                    ON CONFLICT (id) DO UPDATE SET status = 'running',
                         started_at = COALESCE(jobs.started_at, EXCLUDED.started_at),
                         attempts = GREATEST(jobs.attempts, EXCLUDED.attempts),
                         not_before = NULL, updated_at = now()
                    WHERE jobs.status NOT IN {TERMINAL}
                    RETURNING id
                 ), attempts AS (
                    INSERT INTO job_attempts (job_id, attempt, delivery, worker, deployment, provider, model, status, started_at)
                    SELECT job_id, attempt, delivery, worker, deployment, provider, model, 'started', started_at
                    FROM jsonb_to_recordset($2::jsonb) AS t(job_id uuid, attempt int, delivery int, worker text,
                         deployment text, provider text, model text, started_at timestamptz)
                    WHERE t.job_id IN (SELECT id FROM claimed)
                    ON CONFLICT (job_id, attempt) DO NOTHING
                 )
                 SELECT id FROM claimed"
            ))
            .bind(crate::pgtext::rows_param(&jobs, &[])?)
            .bind(crate::pgtext::rows_param(&started, &[])?)
            .fetch_all(&mut *conn)
            .await?;
            let claimed: HashSet<Uuid> = claimed.into_iter().collect();
            refused.extend(
                jobs.iter()
                    .map(|s| s.job_id)
                    .filter(|id| !claimed.contains(id)),
            );
        }
        if finished {
            // Attempts (of finished and of deferred jobs) and results: one statement, two
            // tables, no row touched twice.
            sqlx::query(&format!(
                "WITH attempts AS (
                    INSERT INTO job_attempts (job_id, attempt, delivery, worker, deployment, provider, model, status,
                         error_class, error_message, prompt_tokens, completion_tokens, cached_tokens,
                         cache_creation_tokens, reasoning_tokens, usage_estimated, cost, pricing_missing, ttft_ms,
                         latency_ms, started_at, finished_at, dropped_params)
                    SELECT * FROM jsonb_to_recordset($1::jsonb) AS t(job_id uuid, attempt int, delivery int, worker text,
                         deployment text, provider text, model text, status text, error_class text, error_message text,
                         prompt_tokens bigint, completion_tokens bigint, cached_tokens bigint,
                         cache_creation_tokens bigint, reasoning_tokens bigint, usage_estimated boolean,
                         cost numeric, pricing_missing boolean, ttft_ms double precision, latency_ms double precision,
                         started_at timestamptz, finished_at timestamptz, dropped_params jsonb)
                    ON CONFLICT (job_id, attempt) DO UPDATE SET status = EXCLUDED.status,
                         error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
                         prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,
                         cached_tokens = EXCLUDED.cached_tokens, cache_creation_tokens = EXCLUDED.cache_creation_tokens,
                         reasoning_tokens = EXCLUDED.reasoning_tokens, usage_estimated = EXCLUDED.usage_estimated,
                         cost = EXCLUDED.cost, pricing_missing = EXCLUDED.pricing_missing, ttft_ms = EXCLUDED.ttft_ms,
                         latency_ms = EXCLUDED.latency_ms, finished_at = EXCLUDED.finished_at,
                         dropped_params = EXCLUDED.dropped_params
                 ), results AS (
                    INSERT INTO jobs (id, owner, model_group, tier, reply_subject, created_at, status, result, usage, cost,
                         pricing_missing, attempts, error_class, error_message, finished_at, result_text)
                    SELECT * FROM jsonb_to_recordset($2::jsonb) AS t(id uuid, owner text, model_group text, tier text,
                         reply_subject text, created_at timestamptz, status text, result jsonb, usage jsonb,
                         cost numeric, pricing_missing boolean, attempts int, error_class text, error_message text,
                         finished_at timestamptz, result_text text)
                    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, result = EXCLUDED.result,
                         result_text = EXCLUDED.result_text,
                         usage = EXCLUDED.usage, cost = EXCLUDED.cost, pricing_missing = EXCLUDED.pricing_missing,
                         attempts = EXCLUDED.attempts, error_class = EXCLUDED.error_class,
                         error_message = EXCLUDED.error_message, finished_at = EXCLUDED.finished_at,
                         not_before = NULL, updated_at = now()
                    WHERE jobs.status NOT IN {TERMINAL}
                 ), bodies AS (
                    DELETE FROM job_bodies WHERE job_id IN
                         (SELECT id FROM jsonb_to_recordset($2::jsonb) AS t(id uuid))
                 )
                 SELECT 1"
            ))
            .bind(crate::pgtext::rows_param(&finished_attempts, &[])?)
            .bind(crate::pgtext::rows_param(&finished_jobs, &["result"])?)
            .execute(&mut *conn)
            .await?;
        }
        if !deferred.is_empty() {
            sqlx::query(&format!(
                "UPDATE jobs SET status = 'queued', not_before = t.not_before, updated_at = now()
                 FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, not_before timestamptz)
                 WHERE jobs.id = t.id AND jobs.status NOT IN {TERMINAL}"
            ))
            .bind(crate::pgtext::rows_param(&deferred, &[])?)
            .execute(&mut *conn)
            .await?;
        }
        if !webhooks.is_empty() {
            sqlx::query(
                "UPDATE jobs SET webhook_status = t.status, webhook_attempts = t.attempts, updated_at = now()
                 FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, status text, attempts int)
                 WHERE jobs.id = t.id",
            )
            .bind(crate::pgtext::rows_param(&webhooks, &[])?)
            .execute(&mut *conn)
            .await?;
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        Ok(refused)
    }
}

/// Keeps the last entry for each key, preserving order otherwise.
fn dedup_last<T, K: Eq + std::hash::Hash>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut keep: Vec<bool> = items.iter().rev().map(|x| seen.insert(key(x))).collect();
    keep.reverse();
    let mut keep = keep.into_iter();
    items.retain(|_| keep.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::dedup_last;

    #[test]
    fn dedup_keeps_last_of_each_key() {
        let mut v = vec![(1, 'a'), (2, 'b'), (1, 'c'), (3, 'd'), (2, 'e')];
        dedup_last(&mut v, |x| x.0);
        assert_eq!(v, vec![(1, 'c'), (3, 'd'), (2, 'e')]);
    }
}
