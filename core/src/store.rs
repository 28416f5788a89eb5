//! Postgres: the pool, migrations, and every statement Sluice runs (the schema is `migrations/`).
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
use sluice_schemas::{DoneEvent, ErrorClass, JobStatus, Tier};
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
    pub tier: Tier,
    pub reply_subject: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// Where the job's envelope is published, and the envelope: kept in the outbox until
    /// the publish is acknowledged (see [`Store::outbox_due`]).
    pub subject: Option<String>,
    pub payload: Option<String>,
    /// The `x-request-id` of the request that submitted it.
    pub request_id: Option<String>,
}

/// A job envelope recorded but not known to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub job_id: Uuid,
    pub subject: String,
    pub payload: String,
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
    pub tier: Tier,
    pub reply_subject: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivery: u32,
    pub worker: String,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    pub started_at: DateTime<Utc>,
    /// Calls the job may make across all its deliveries; the claim is refused beyond.
    pub max_calls: u32,
    /// USD this call reserved against budgets (re-reserved from the ledger if Redis
    /// loses its counters while the call is in flight).
    pub reserved_cost: Option<f64>,
}

/// The ledger's answer to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Durably written.
    Done,
    /// A `Started` entry claimed the job; the call's attempt number, unique for the job
    /// across every delivery (allocated by the job row).
    Claimed(u32),
    /// The job had already ended (cancelled, expired, finished): not claimed, not called.
    Ended,
    /// The job made every call it may: not claimed, not called.
    CallsSpent,
    /// Another `Started` entry of the same job was in the same batch: try again.
    Busy,
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
    pub error_class: Option<ErrorClass>,
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
    pub tier: Tier,
    pub reply_subject: Option<String>,
    pub created_at: DateTime<Utc>,
    pub status: JobStatus,
    pub result: Option<Value>,
    pub usage: Option<Value>,
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    pub attempts: u32,
    pub error_class: Option<ErrorClass>,
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
        /// Deliveries of the job's end (webhook, reply subject), recorded with it.
        deliveries: Vec<NewDelivery>,
    },
}

/// A delivery of a job's end, recorded with its result (see `worker/src/deliveries.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct NewDelivery {
    pub job_id: Uuid,
    /// `webhook` or `reply`.
    pub kind: String,
    pub target: String,
    pub body: String,
}

/// A delivery claimed for one try.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub job_id: Uuid,
    pub kind: String,
    pub target: String,
    pub body: String,
    /// Tries so far, this one included.
    pub attempts: i32,
    pub owner: String,
    pub created_at: DateTime<Utc>,
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
    /// The job's call count as this delivery last knew it: a larger count means another
    /// delivery started a call since, and the row it runs is left alone.
    pub calls_seen: u32,
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

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    #[sqlx(try_from = "i32")]
    pub attempt: u32,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    pub status: String,
    pub error_class: Option<ErrorClass>,
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
    /// Provider calls so far (the last attempt number allocated).
    pub calls: u32,
    /// Times the job handed its message back to wait for a limit.
    pub deferrals: u32,
    /// Deliveries whose call was cut short: their worker died (or stalls) mid-call, its
    /// attempt row still `started`.
    pub cut_short: u32,
}

const TERMINAL: &str = "('succeeded','failed','cancelled','expired')";

/// Parses a Postgres URL; with `SSL_CERT_FILE` set, the trusted roots become the system
/// roots, `SSL_CERT_FILE` and the URL's `sslrootcert` together (sqlx alone would use
/// `SSL_CERT_FILE` instead of the system roots).
fn connect_options(
    url: &str,
    tls: &crate::tls::TlsEnv,
) -> Result<sqlx::postgres::PgConnectOptions, StoreError> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Connect(format!("invalid DATABASE_URL: {e}")))?;
    if tls.ssl_cert_file.is_none() {
        return Ok(options);
    }
    let root_cert = url
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| matches!(*k, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
        .map(|(_, v)| std::path::PathBuf::from(v))
        .or_else(|| std::env::var_os("PGSSLROOTCERT").map(Into::into));
    let extra: Vec<&std::path::Path> = root_cert.iter().map(|p| p.as_path()).collect();
    match crate::tls::trusted_pem(tls, &extra) {
        Ok(Some(pem)) => Ok(options.ssl_root_cert_from_pem(pem)),
        Ok(None) => Ok(options),
        Err(e) => Err(StoreError::Connect(e.to_string())),
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects to `url` (`sslmode`, `sslrootcert`, `sslcert`/`sslkey` as libpq reads
    /// them). Trusts `SSL_CERT_FILE` of the process environment besides the system roots.
    /// No statement timeout (`sluice migrate`, tests).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let tls = crate::tls::TlsEnv::from_env(&crate::config::ProcessEnv);
        Store::connect_with(url, max_connections, &tls).await
    }

    /// [`Store::connect`] with the TLS settings of a loaded config.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        tls: &crate::tls::TlsEnv,
    ) -> Result<Store, StoreError> {
        Store::connect_bounded(url, max_connections, tls, None).await
    }

    /// [`Store::connect_with`], every statement of the pool cancelled by Postgres after
    /// `statement_timeout`, so no query can hold a connection (and the requests queued
    /// behind it) for ever.
    pub async fn connect_bounded(
        url: &str,
        max_connections: u32,
        tls: &crate::tls::TlsEnv,
        statement_timeout: Option<Duration>,
    ) -> Result<Store, StoreError> {
        let mut options = connect_options(url, tls)?;
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

    /// Whether this pool's connections to Postgres are encrypted (asked of the server).
    pub async fn is_encrypted(&self) -> Result<bool, StoreError> {
        let ssl: Option<bool> =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_optional(&self.pool)
                .await?;
        Ok(ssl.unwrap_or(false))
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
        // The job row and its outbox entry in one statement: a job is never recorded
        // without the envelope that lets a reconciler publish it.
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "WITH input AS (
                SELECT * FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, owner text, idempotency_key text,
                     model_group text, tier text, reply_subject text, metadata jsonb, created_at timestamptz,
                     subject text, payload text, request_id text)
             ), inserted AS (
                INSERT INTO jobs (id, owner, idempotency_key, model_group, tier, status, reply_subject, metadata, created_at, request_id)
                SELECT id, owner, idempotency_key, model_group, tier, 'queued', reply_subject, metadata, created_at, request_id
                FROM input
                ON CONFLICT DO NOTHING
                RETURNING id
             ), outbox AS (
                INSERT INTO job_outbox (job_id, subject, payload)
                SELECT i.id, i.subject, i.payload FROM input i
                WHERE i.subject IS NOT NULL AND i.payload IS NOT NULL AND i.id IN (SELECT id FROM inserted)
                ON CONFLICT DO NOTHING
             )
             SELECT id FROM inserted",
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

    /// Drops the outbox entries of jobs whose publish JetStream acknowledged, and records
    /// where each message sits in the jobs stream (its sequence), in one statement: the
    /// reconciler (`worker/src/reconcile.rs`) ends jobs whose message is gone from there.
    /// The job rows are locked in id order, so two of these never deadlock each other.
    pub async fn outbox_published(&self, published: &[(Uuid, u64)]) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = published.iter().map(|p| p.0).collect();
        let seqs: Vec<i64> = published
            .iter()
            .map(|p| i64::try_from(p.1).unwrap_or(i64::MAX))
            .collect();
        sqlx::query(
            "WITH input AS (
                SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS t(id, seq)
             ), gone AS (
                DELETE FROM job_outbox WHERE job_id IN (SELECT id FROM input)
             ), locked AS (
                SELECT j.id FROM jobs j WHERE j.id IN (SELECT id FROM input) ORDER BY j.id FOR UPDATE
             )
             UPDATE jobs SET stream_seq = i.seq FROM input i, locked l
             WHERE jobs.id = i.id AND l.id = i.id",
        )
        .bind(&ids)
        .bind(&seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Unfinished jobs a reconciler should look for in the jobs stream: no outbox entry,
    /// a known stream sequence, and neither updated nor looked at for `grace`; up to
    /// `limit`, taken for this look (rows another worker is taking are skipped).
    pub async fn lost_candidates(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<(Uuid, u64)>, StoreError> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "WITH due AS (
                SELECT j.id FROM jobs j
                WHERE j.status IN ('queued', 'running')
                  AND COALESCE(j.stream_seq, j.batch_seq) IS NOT NULL
                  AND j.updated_at < now() - make_interval(secs => $1)
                  AND (j.seq_checked_at IS NULL OR j.seq_checked_at < now() - make_interval(secs => $1))
                  AND NOT EXISTS (SELECT 1 FROM job_outbox o WHERE o.job_id = j.id)
                ORDER BY j.updated_at LIMIT $2
                FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs SET seq_checked_at = now() FROM due WHERE jobs.id = due.id
             RETURNING jobs.id, COALESCE(jobs.stream_seq, jobs.batch_seq)",
        )
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seq)| Some((id, u64::try_from(seq).ok()?)))
            .collect())
    }

    /// Ends a job whose queue message is gone: `failed` with `error`, if it is still
    /// unfinished and still at stream sequence `seq`, and, in the same transaction, queues
    /// the delivery of its end to its reply subject if `reply_ok` allows that subject (a
    /// webhook URL lives only in the lost message). Returns the ended row and whether a
    /// delivery was queued; `None` when the job moved on meanwhile.
    pub async fn end_lost_job(
        &self,
        id: Uuid,
        seq: u64,
        error: &JobError,
        reply_ok: impl Fn(&str) -> bool + Send,
    ) -> Result<Option<(JobRow, bool)>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let ended: Option<(JobRow, Option<String>)> = sqlx::query(
            "UPDATE jobs SET status = 'failed', error_class = $3, error_message = $4,
                 finished_at = now(), not_before = NULL, updated_at = now(),
                 attempts = GREATEST(attempts, calls)
             WHERE id = $1 AND status IN ('queued', 'running')
               AND COALESCE(stream_seq, batch_seq) = $2
             RETURNING id, owner, model_group, tier, status, metadata, result, result_text, usage, cost,
                 pricing_missing, attempts, error_class, error_message, not_before, created_at, started_at,
                 finished_at, reply_subject",
        )
        .bind(id)
        .bind(seq)
        .bind(error.class.as_str())
        .bind(&error.message)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| {
            use sqlx::FromRow;
            Ok::<_, sqlx::Error>((JobRow::from_row(&r)?, r.try_get("reply_subject")?))
        })
        .transpose()?;
        let Some((row, reply)) = ended else {
            return Ok(None);
        };
        let mut replies = false;
        if let Some(subject) = reply.filter(|s| reply_ok(s)) {
            let body = serde_json::to_string(&row.done_event())?;
            sqlx::query(
                "INSERT INTO job_deliveries (job_id, kind, target, body) VALUES ($1, 'reply', $2, $3)
                 ON CONFLICT (job_id, kind) DO NOTHING",
            )
            .bind(id)
            .bind(subject)
            .bind(body)
            .execute(&mut *tx)
            .await?;
            replies = true;
        }
        tx.commit().await?;
        Ok(Some((row, replies)))
    }

    /// Outbox entries older than `age` (their api died or lost the ack): those whose job
    /// is still queued and never called, up to `limit`. Entries of jobs that moved on are
    /// dropped.
    pub async fn outbox_due(
        &self,
        age: Duration,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let age = age.as_secs_f64();
        sqlx::query(&format!(
            "DELETE FROM job_outbox o USING jobs j
             WHERE o.job_id = j.id AND (j.status IN {TERMINAL} OR j.calls > 0)"
        ))
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_as::<_, OutboxRow>(
            "SELECT o.job_id, o.subject, o.payload FROM job_outbox o JOIN jobs j ON j.id = o.job_id
             WHERE j.status = 'queued' AND j.calls = 0
               AND o.created_at < now() - make_interval(secs => $1)
             ORDER BY o.created_at LIMIT $2",
        )
        .bind(age)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
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

    /// Writes a batch of ledger entries in one transaction, four statements at most.
    /// Answers each `Started` entry: whether it claimed its job, and the attempt number
    /// the job row allocated for the call (see [`Written`]). Other entries are `Done`.
    pub async fn write_ledger(&self, entries: &[LedgerEntry]) -> Result<Vec<Written>, StoreError> {
        let mut started: Vec<&AttemptStarted> = Vec::new();
        let mut finished_jobs: Vec<&JobOutcome> = Vec::new();
        let mut finished_attempts: Vec<&AttemptRecord> = Vec::new();
        let mut deferred: Vec<&JobDeferred> = Vec::new();
        let mut webhooks: Vec<&WebhookOutcome> = Vec::new();
        let mut deliveries: Vec<&NewDelivery> = Vec::new();
        let mut answers = vec![Written::Done; entries.len()];
        let mut started_jobs: HashSet<Uuid> = HashSet::new();
        for (i, entry) in entries.iter().enumerate() {
            match entry {
                LedgerEntry::Started(s) => {
                    // One claim per job per statement: a second one waits for the next.
                    if started_jobs.insert(s.job_id) {
                        started.push(s);
                    } else {
                        answers[i] = Written::Busy;
                    }
                }
                LedgerEntry::Attempts(a) => finished_attempts.extend(a.iter()),
                LedgerEntry::Deferred(d) => deferred.push(d),
                LedgerEntry::Webhook(w) => webhooks.push(w),
                LedgerEntry::Finished {
                    job,
                    attempts,
                    deliveries: d,
                } => {
                    finished_jobs.push(job);
                    finished_attempts.extend(attempts.iter());
                    deliveries.extend(d.iter());
                }
            }
        }
        // One row per key per statement: ON CONFLICT DO UPDATE cannot touch a row twice.
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
        let mut claims: std::collections::HashMap<Uuid, Written> = Default::default();
        if !started.is_empty() {
            // The job row is the arbiter between deliveries of a job and the api ending
            // it (cancel, batch expiry): a job already ended, or one that made all the
            // calls it may, is not claimed and no attempt row is written for it. The row
            // also numbers the calls: each claim takes the next number under the row
            // lock, so concurrent deliveries never share one.
            let claimed: Vec<(Uuid, i32)> = sqlx::query_as(&format!(
                "WITH input AS (
                    SELECT * FROM jsonb_to_recordset($1::jsonb) AS t(job_id uuid, owner text, model_group text,
                         tier text, reply_subject text, created_at timestamptz, started_at timestamptz,
                         delivery int, worker text, deployment text, provider text, model text, max_calls int,
                         reserved_cost numeric)
                 ), claimed AS (
                    INSERT INTO jobs (id, owner, model_group, tier, status, reply_subject, created_at, started_at,
                         attempts, calls)
                    SELECT job_id, owner, model_group, tier, 'running', reply_subject, created_at, started_at, 1, 1
                    FROM input
                    ON CONFLICT (id) DO UPDATE SET status = 'running',
                         started_at = COALESCE(jobs.started_at, EXCLUDED.started_at),
                         calls = jobs.calls + 1,
                         attempts = GREATEST(jobs.attempts, jobs.calls + 1),
                         not_before = NULL, updated_at = now()
                    WHERE jobs.status NOT IN {TERMINAL}
                      AND jobs.calls < (SELECT i.max_calls FROM input i WHERE i.job_id = jobs.id)
                    RETURNING id, calls
                 ), attempts AS (
                    INSERT INTO job_attempts (job_id, attempt, delivery, worker, deployment, provider, model, status,
                         started_at, reserved_cost)
                    SELECT i.job_id, c.calls, i.delivery, i.worker, i.deployment, i.provider, i.model, 'started',
                         i.started_at, i.reserved_cost
                    FROM input i JOIN claimed c ON c.id = i.job_id
                    ON CONFLICT (job_id, attempt) DO NOTHING
                 )
                 SELECT id, calls FROM claimed"
            ))
            .bind(crate::pgtext::rows_param(&started, &[])?)
            .fetch_all(&mut *conn)
            .await?;
            for (id, attempt) in claimed {
                claims.insert(id, Written::Claimed(u32::try_from(attempt).unwrap_or(0)));
            }
            let refused: Vec<Uuid> = started
                .iter()
                .map(|s| s.job_id)
                .filter(|id| !claims.contains_key(id))
                .collect();
            if !refused.is_empty() {
                let ended: Vec<(Uuid, bool)> = sqlx::query_as(&format!(
                    "SELECT id, status IN {TERMINAL} FROM jobs WHERE id = ANY($1)"
                ))
                .bind(&refused)
                .fetch_all(&mut *conn)
                .await?;
                for (id, terminal) in ended {
                    claims.insert(
                        id,
                        if terminal {
                            Written::Ended
                        } else {
                            Written::CallsSpent
                        },
                    );
                }
            }
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
                    WHERE job_attempts.delivery = EXCLUDED.delivery AND job_attempts.worker = EXCLUDED.worker
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
                         attempts = GREATEST(EXCLUDED.attempts, jobs.calls), error_class = EXCLUDED.error_class,
                         error_message = EXCLUDED.error_message, finished_at = EXCLUDED.finished_at,
                         not_before = NULL, updated_at = now()
                    WHERE jobs.status NOT IN {TERMINAL}
                    RETURNING id
                 ), deliveries AS (
                    INSERT INTO job_deliveries (job_id, kind, target, body)
                    SELECT t.job_id, t.kind, t.target, t.body
                    FROM jsonb_to_recordset($3::jsonb) AS t(job_id uuid, kind text, target text, body text)
                    WHERE t.job_id IN (SELECT id FROM results)
                    ON CONFLICT (job_id, kind) DO NOTHING
                 ), bodies AS (
                    DELETE FROM job_bodies WHERE job_id IN
                         (SELECT id FROM jsonb_to_recordset($2::jsonb) AS t(id uuid))
                 )
                 SELECT 1"
            ))
            .bind(crate::pgtext::rows_param(&finished_attempts, &[])?)
            .bind(crate::pgtext::rows_param(&finished_jobs, &["result"])?)
            .bind(crate::pgtext::rows_param(&deliveries, &[])?)
            .execute(&mut *conn)
            .await?;
        }
        if !deferred.is_empty() {
            // Back to `queued` only if no other delivery started a call since this one
            // last looked: that delivery's `running` row is left alone.
            sqlx::query(&format!(
                "UPDATE jobs SET deferrals = jobs.deferrals + 1,
                     status = CASE WHEN jobs.calls <= t.calls_seen THEN 'queued' ELSE jobs.status END,
                     not_before = CASE WHEN jobs.calls <= t.calls_seen THEN t.not_before ELSE jobs.not_before END,
                     updated_at = now()
                 FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, not_before timestamptz, calls_seen int)
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
        for (answer, entry) in answers.iter_mut().zip(entries) {
            if let (Written::Done, LedgerEntry::Started(s)) = (*answer, entry) {
                // A job row that vanished under the claim (none should): do not call.
                *answer = claims.get(&s.job_id).copied().unwrap_or(Written::Ended);
            }
        }
        Ok(answers)
    }
}

impl Store {
    /// Claims up to `limit` due deliveries for one try each: their next try moves `lease`
    /// ahead, so a worker that dies mid-try leaves them to another after that.
    pub async fn claim_deliveries(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryRow>(
            "WITH due AS (
                SELECT id FROM job_deliveries WHERE status = 'pending' AND next_at <= now()
                ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE job_deliveries d SET attempts = d.attempts + 1,
                     next_at = now() + make_interval(secs => $2)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.job_id, d.kind, d.target, d.body, d.attempts, d.created_at
             )
             SELECT c.id, c.job_id, c.kind, c.target, c.body, c.attempts, c.created_at,
                    COALESCE(j.owner, 'master') AS owner
             FROM claimed c LEFT JOIN jobs j ON j.id = c.job_id",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a try's outcome: delivered, failed for good, or due again after `retry`.
    /// The job shows its webhook's outcome (`webhook_status`, `webhook_attempts`).
    pub async fn delivery_tried(
        &self,
        row: &DeliveryRow,
        outcome: Result<(), String>,
        retry: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (status, error) = match (&outcome, retry) {
            (Ok(()), _) => ("delivered", None),
            (Err(e), Some(_)) => ("pending", Some(e.as_str())),
            (Err(e), None) => ("failed", Some(e.as_str())),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE job_deliveries SET status = $2, last_error = $3,
                 next_at = now() + make_interval(secs => $4),
                 finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(status)
        .bind(error)
        .bind(retry.unwrap_or_default().as_secs_f64())
        .execute(&mut *tx)
        .await?;
        if row.kind == "webhook" {
            sqlx::query(
                "UPDATE jobs SET webhook_status = $2, webhook_attempts = $3, updated_at = now()
                 WHERE id = $1",
            )
            .bind(row.job_id)
            .bind(status)
            .bind(row.attempts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
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
