//! The worker's ledger: attempt claims, finished attempts and results, deferrals and
//! webhook outcomes, written a batch at a time by [`crate::group_commit`].

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use sluice_schemas::{AttemptStatus, ErrorClass, JobStatus, Tier};
use sqlx::postgres::{PgArguments, PgConnection};
use uuid::Uuid;

use super::arrays::{int, stamp, text};
use super::{NewDelivery, Store, StoreError, TERMINAL};

/// The worker's note that an attempt is starting: the job is running, a call is being made.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptStarted {
    pub job_id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: Tier,
    pub reply_subject: Option<String>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    pub delivery: u32,
    pub worker: String,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    #[serde(serialize_with = "timestamp")]
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
    pub status: AttemptStatus,
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
    #[serde(serialize_with = "timestamp")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
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
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    pub status: JobStatus,
    /// The result's JSON text, encoded once where the job ends and copied into the row
    /// as it is (a `Value` would be built, then encoded again).
    pub result: Option<Box<RawValue>>,
    pub usage: Option<Value>,
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    pub attempts: u32,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    #[serde(serialize_with = "timestamp")]
    pub finished_at: DateTime<Utc>,
    /// Answered from the response cache (no call; `cost` 0).
    pub cache_hit: bool,
    /// What the calls the cache replaced cost.
    pub cost_saved: Option<Decimal>,
}

/// One entry of the worker's ledger.
#[derive(Debug, Clone)]
pub enum LedgerEntry {
    /// A call is starting: claim the job and number the call.
    Started(AttemptStarted),
    /// Attempts that ended without ending the job (it was deferred).
    Attempts(Vec<AttemptRecord>),
    /// The job waits for a limit: back to `queued` until `not_before`.
    Deferred(JobDeferred),
    /// How the job's webhook delivery ended.
    Webhook(WebhookOutcome),
    /// The job ended: its result, its last attempts and the deliveries of its end.
    Finished {
        /// The job's terminal state.
        job: JobOutcome,
        /// Calls of this delivery not yet on record.
        attempts: Vec<AttemptRecord>,
        /// Deliveries of the job's end (webhook, reply subject), recorded with it.
        deliveries: Vec<NewDelivery>,
    },
}

/// How a job's webhook delivery ended, shown on the job.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookOutcome {
    pub id: Uuid,
    pub status: String,
    pub attempts: u32,
}

/// A job handing its message back to wait for a limit.
#[derive(Debug, Clone, Serialize)]
pub struct JobDeferred {
    pub id: Uuid,
    #[serde(serialize_with = "timestamp")]
    pub not_before: DateTime<Utc>,
    /// The job's call count as this delivery last knew it: a larger count means another
    /// delivery started a call since, and the row it runs is left alone.
    pub calls_seen: u32,
}

/// A batch of ledger entries sorted by the statement that writes them.
#[derive(Default)]
struct Sorted<'a> {
    started: Vec<&'a AttemptStarted>,
    finished_jobs: Vec<&'a JobOutcome>,
    finished_attempts: Vec<&'a AttemptRecord>,
    deferred: Vec<&'a JobDeferred>,
    webhooks: Vec<&'a WebhookOutcome>,
    deliveries: Vec<&'a NewDelivery>,
    /// The claims and the finished rows go in one statement: both are there and no job
    /// has both (a statement's parts do not see one another's writes, and one statement
    /// cannot change a row twice).
    claims_with_finished: bool,
}

impl<'a> Sorted<'a> {
    /// Sorts `entries`; a second `Started` entry of a job is answered `Busy` in `answers`
    /// (one claim per job per statement: it waits for the next batch).
    fn sort(entries: &'a [LedgerEntry], answers: &mut [Written]) -> Sorted<'a> {
        let mut sorted = Sorted::default();
        let mut started_jobs: HashSet<Uuid> = HashSet::new();
        for (entry, answer) in entries.iter().zip(answers.iter_mut()) {
            match entry {
                LedgerEntry::Started(s) => {
                    if started_jobs.insert(s.job_id) {
                        sorted.started.push(s);
                    } else {
                        *answer = Written::Busy;
                    }
                }
                LedgerEntry::Attempts(a) => sorted.finished_attempts.extend(a.iter()),
                LedgerEntry::Deferred(d) => sorted.deferred.push(d),
                LedgerEntry::Webhook(w) => sorted.webhooks.push(w),
                LedgerEntry::Finished {
                    job,
                    attempts,
                    deliveries,
                } => {
                    sorted.finished_jobs.push(job);
                    sorted.finished_attempts.extend(attempts.iter());
                    sorted.deliveries.extend(deliveries.iter());
                }
            }
        }
        // One row per key per statement: ON CONFLICT DO UPDATE cannot touch a row twice.
        dedup_last(&mut sorted.finished_jobs, |j| (j.id, 0));
        dedup_last(&mut sorted.finished_attempts, |a| (a.job_id, a.attempt));
        dedup_last(&mut sorted.deferred, |d| (d.id, 0));
        sorted.claims_with_finished = !sorted.started.is_empty()
            && sorted.finished()
            && !sorted
                .finished_jobs
                .iter()
                .map(|j| j.id)
                .chain(sorted.finished_attempts.iter().map(|a| a.job_id))
                .any(|id| started_jobs.contains(&id));
        sorted
    }

    /// Whether finished attempts or results are to be written (one statement for both).
    fn finished(&self) -> bool {
        !self.finished_jobs.is_empty() || !self.finished_attempts.is_empty()
    }

    /// How many statements the batch takes.
    fn statements(&self) -> usize {
        [
            !self.started.is_empty(),
            self.finished() && !self.claims_with_finished,
            !self.deferred.is_empty(),
            !self.webhooks.is_empty(),
        ]
        .iter()
        .filter(|x| **x)
        .count()
    }
}

impl Store {
    /// Writes a batch of ledger entries in one transaction, four statements at most (the
    /// claims and the finished rows of other jobs share one).
    /// Answers each `Started` entry: whether it claimed its job, and the attempt number
    /// the job row allocated for the call (see [`Written`]). Other entries are `Done`.
    pub async fn write_ledger(&self, entries: &[LedgerEntry]) -> Result<Vec<Written>, StoreError> {
        let mut answers = vec![Written::Done; entries.len()];
        let batch = Sorted::sort(entries, &mut answers);
        // One statement runs on its own (one round trip); more share a transaction.
        let mut tx = None;
        let mut solo = None;
        let conn: &mut PgConnection = if batch.statements() > 1 {
            &mut *tx.insert(self.pool.begin().await?)
        } else {
            &mut *solo.insert(self.pool.acquire().await?)
        };
        let claims = if batch.claims_with_finished {
            claim_started(conn, &batch.started, Some(&batch)).await?
        } else {
            let claims = claim_started(conn, &batch.started, None).await?;
            if batch.finished() {
                write_finished(conn, &batch).await?;
            }
            claims
        };
        write_deferred(conn, &batch.deferred).await?;
        write_webhooks(conn, &batch.webhooks).await?;
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

/// Claims the jobs of `started` and writes an attempt row for each claim; answers each job
/// `Claimed` with its attempt number, or why it was refused. With `finished`, the same
/// statement also writes that batch's finished attempts and results ([`write_finished`]):
/// at a low rate a batch often holds one job's claim and another's end, and one statement
/// is one round trip and no transaction instead of four (`BEGIN`, two statements, `COMMIT`).
///
/// The job row is the arbiter between deliveries of a job and the api ending it (cancel,
/// batch expiry): a job already ended, or one that made all the calls it may, is not
/// claimed and no attempt row is written for it. The row also numbers the calls: each
/// claim takes the next number under the row lock, so concurrent deliveries never share one.
async fn claim_started(
    conn: &mut PgConnection,
    started: &[&AttemptStarted],
    finished: Option<&Sorted<'_>>,
) -> Result<HashMap<Uuid, Written>, StoreError> {
    let mut claims: HashMap<Uuid, Written> = HashMap::new();
    if started.is_empty() {
        return Ok(claims);
    }
    let mut args = PgArguments::default();
    claim_params(&mut args, started)?;
    let claimed: Vec<(Uuid, i32)> = match finished {
        None => {
            sqlx::query_as_with(&CLAIM, args)
                .fetch_all(&mut *conn)
                .await?
        }
        Some(batch) => {
            finished_params(&mut args, batch)?;
            sqlx::query_as_with(&CLAIM_AND_FINISH, args)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    for (id, attempt) in claimed {
        claims.insert(id, Written::Claimed(u32::try_from(attempt).unwrap_or(0)));
    }
    let refused: Vec<Uuid> = started
        .iter()
        .map(|s| s.job_id)
        .filter(|id| !claims.contains_key(id))
        .collect();
    if !refused.is_empty() {
        claims.extend(why_refused(conn, &refused).await?);
    }
    Ok(claims)
}

/// The claims' columns, parameters `$1` to `$14` of [`claim_parts`].
fn claim_params(args: &mut PgArguments, started: &[&AttemptStarted]) -> Result<(), StoreError> {
    use super::arrays::{column, opt_text};
    let s = started;
    column(args, s, |s| s.job_id)?;
    column(args, s, |s| text(&s.owner))?;
    column(args, s, |s| text(&s.model_group))?;
    column(args, s, |s| s.tier.as_str())?;
    column(args, s, |s| opt_text(s.reply_subject.as_deref()))?;
    column(args, s, |s| stamp(&s.created_at))?;
    column(args, s, |s| stamp(&s.started_at))?;
    column(args, s, |s| int(s.delivery))?;
    column(args, s, |s| text(&s.worker))?;
    column(args, s, |s| text(&s.deployment))?;
    column(args, s, |s| text(&s.provider))?;
    column(args, s, |s| text(&s.model))?;
    column(args, s, |s| int(s.max_calls))?;
    column(args, s, |s| s.reserved_cost)
}

/// The claim's parts of a statement (its columns are parameters `$1` to `$14`, see
/// [`claim_params`]): `claimed` holds the claimed jobs and their call numbers.
fn claim_parts() -> String {
    format!(
        "input AS (
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::timestamptz[], $7::timestamptz[], $8::int[], $9::text[], $10::text[], $11::text[],
                 $12::text[], $13::int[], $14::float8[])
              AS t(job_id, owner, model_group, tier, reply_subject, created_at, started_at, delivery,
                 worker, deployment, provider, model, max_calls, reserved_cost)
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
         ), started AS (
            INSERT INTO job_attempts (job_id, attempt, delivery, worker, deployment, provider, model, status,
                 started_at, reserved_cost)
            SELECT i.job_id, c.calls, i.delivery, i.worker, i.deployment, i.provider, i.model, 'started',
                 i.started_at, i.reserved_cost::numeric
            FROM input i JOIN claimed c ON c.id = i.job_id
            ON CONFLICT (job_id, attempt) DO NOTHING
         )"
    )
}

/// The claims alone.
static CLAIM: LazyLock<String> =
    LazyLock::new(|| format!("WITH {} SELECT id, calls FROM claimed", claim_parts()));

/// The claims and the finished rows of other jobs, in one statement.
static CLAIM_AND_FINISH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {} SELECT id, calls FROM claimed",
        claim_parts(),
        finished_parts(15)
    )
});

/// The finished rows alone.
static FINISH: LazyLock<String> = LazyLock::new(|| format!("WITH {} SELECT 1", finished_parts(1)));

/// Why each of the `refused` claims was refused: the job had ended, or spent its calls.
async fn why_refused(
    conn: &mut PgConnection,
    refused: &[Uuid],
) -> Result<impl Iterator<Item = (Uuid, Written)>, StoreError> {
    let ended: Vec<(Uuid, bool)> = sqlx::query_as(&format!(
        "SELECT id, status IN {TERMINAL} FROM jobs WHERE id = ANY($1)"
    ))
    .bind(refused)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ended.into_iter().map(|(id, terminal)| {
        let answer = if terminal {
            Written::Ended
        } else {
            Written::CallsSpent
        };
        (id, answer)
    }))
}

/// Attempts (of finished and of deferred jobs), results and the deliveries of each end:
/// one statement, three tables, no row touched twice. A job that had already ended keeps
/// its result and gets no deliveries.
async fn write_finished(conn: &mut PgConnection, batch: &Sorted<'_>) -> Result<(), StoreError> {
    let mut args = PgArguments::default();
    finished_params(&mut args, batch)?;
    sqlx::query_with(&FINISH, args).execute(&mut *conn).await?;
    Ok(())
}

/// Columns of the finished attempts, of the results and of the deliveries, in the order
/// [`finished_parts`] numbers them (23, 18 and 4 parameters).
fn finished_params(args: &mut PgArguments, batch: &Sorted<'_>) -> Result<(), StoreError> {
    use super::arrays::{column, lossless, opt_json, opt_text, try_column};
    let a = &batch.finished_attempts;
    column(args, a, |a| a.job_id)?;
    column(args, a, |a| int(a.attempt))?;
    column(args, a, |a| int(a.delivery))?;
    column(args, a, |a| text(&a.worker))?;
    column(args, a, |a| text(&a.deployment))?;
    column(args, a, |a| text(&a.provider))?;
    column(args, a, |a| text(&a.model))?;
    column(args, a, |a| a.status.as_str())?;
    column(args, a, |a| a.error_class.map(ErrorClass::as_str))?;
    column(args, a, |a| opt_text(a.error_message.as_deref()))?;
    column(args, a, |a| a.prompt_tokens)?;
    column(args, a, |a| a.completion_tokens)?;
    column(args, a, |a| a.cached_tokens)?;
    column(args, a, |a| a.cache_creation_tokens)?;
    column(args, a, |a| a.reasoning_tokens)?;
    column(args, a, |a| a.usage_estimated)?;
    column(args, a, |a| a.cost)?;
    column(args, a, |a| a.pricing_missing)?;
    column(args, a, |a| a.ttft_ms)?;
    column(args, a, |a| a.latency_ms)?;
    column(args, a, |a| stamp(&a.started_at))?;
    column(args, a, |a| stamp(&a.finished_at))?;
    try_column(args, a, |a| opt_json(a.dropped_params.as_ref()))?;

    let j = &batch.finished_jobs;
    let results: Vec<(Option<&str>, Option<&str>)> =
        j.iter().map(|j| lossless(j.result.as_deref())).collect();
    column(args, j, |j| j.id)?;
    column(args, j, |j| text(&j.owner))?;
    column(args, j, |j| text(&j.model_group))?;
    column(args, j, |j| j.tier.as_str())?;
    column(args, j, |j| opt_text(j.reply_subject.as_deref()))?;
    column(args, j, |j| stamp(&j.created_at))?;
    column(args, j, |j| j.status.as_str())?;
    column(args, &results, |r| r.0)?;
    try_column(args, j, |j| opt_json(j.usage.as_ref()))?;
    column(args, j, |j| j.cost)?;
    column(args, j, |j| j.pricing_missing)?;
    column(args, j, |j| int(j.attempts))?;
    column(args, j, |j| j.error_class.map(ErrorClass::as_str))?;
    column(args, j, |j| opt_text(j.error_message.as_deref()))?;
    column(args, j, |j| stamp(&j.finished_at))?;
    column(args, j, |j| j.cache_hit)?;
    column(args, j, |j| j.cost_saved)?;
    column(args, &results, |r| r.1)?;

    let d = &batch.deliveries;
    column(args, d, |d| d.job_id)?;
    column(args, d, |d| text(&d.kind))?;
    column(args, d, |d| text(&d.target))?;
    column(args, d, |d| text(&d.body))
}

/// Parameters from `$first`, one per type, each cast to its array type: `$7::int[], $8::text[]`.
fn array_params(first: usize, types: &[&str]) -> String {
    let params: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", first + i))
        .collect();
    params.join(", ")
}

/// The finished rows' parts of a statement, their parameters numbered from `$p` (the
/// columns of [`finished_params`]).
fn finished_parts(p: usize) -> String {
    const ATTEMPTS: [&str; 23] = [
        "uuid",
        "int",
        "int",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "boolean",
        "numeric",
        "boolean",
        "float8",
        "float8",
        "timestamptz",
        "timestamptz",
        "text",
    ];
    const RESULTS: [&str; 18] = [
        "uuid",
        "text",
        "text",
        "text",
        "text",
        "timestamptz",
        "text",
        "text",
        "text",
        "numeric",
        "boolean",
        "int",
        "text",
        "text",
        "timestamptz",
        "boolean",
        "numeric",
        "text",
    ];
    const DELIVERIES: [&str; 4] = ["uuid", "text", "text", "text"];
    let results = p + ATTEMPTS.len();
    let deliveries = results + RESULTS.len();
    let attempts = array_params(p, &ATTEMPTS);
    let ids = format!("${results}::uuid[]");
    let results = array_params(results, &RESULTS);
    let deliveries = array_params(deliveries, &DELIVERIES);
    format!(
        "attempts AS (
            INSERT INTO job_attempts (job_id, attempt, delivery, worker, deployment, provider, model, status,
                 error_class, error_message, prompt_tokens, completion_tokens, cached_tokens,
                 cache_creation_tokens, reasoning_tokens, usage_estimated, cost, pricing_missing, ttft_ms,
                 latency_ms, started_at, finished_at, dropped_params)
            SELECT job_id, attempt, delivery, worker, deployment, provider, model, status, error_class,
                 error_message, prompt_tokens, completion_tokens, cached_tokens, cache_creation_tokens,
                 reasoning_tokens, usage_estimated, cost, pricing_missing, ttft_ms, latency_ms, started_at,
                 finished_at, dropped_params::jsonb
            FROM UNNEST({attempts}) AS t(job_id, attempt, delivery, worker, deployment, provider, model,
                 status, error_class, error_message, prompt_tokens, completion_tokens, cached_tokens,
                 cache_creation_tokens, reasoning_tokens, usage_estimated, cost, pricing_missing, ttft_ms,
                 latency_ms, started_at, finished_at, dropped_params)
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
                 pricing_missing, attempts, error_class, error_message, finished_at, cache_hit, cost_saved,
                 result_text)
            SELECT id, owner, model_group, tier, reply_subject, created_at, status, result::jsonb, usage::jsonb,
                 cost, pricing_missing, attempts, error_class, error_message, finished_at, cache_hit, cost_saved,
                 result_text
            FROM UNNEST({results}) AS t(id, owner, model_group, tier, reply_subject, created_at, status, result,
                 usage, cost, pricing_missing, attempts, error_class, error_message, finished_at, cache_hit,
                 cost_saved, result_text)
            ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, result = EXCLUDED.result,
                 result_text = EXCLUDED.result_text,
                 usage = EXCLUDED.usage, cost = EXCLUDED.cost, pricing_missing = EXCLUDED.pricing_missing,
                 attempts = GREATEST(EXCLUDED.attempts, jobs.calls), error_class = EXCLUDED.error_class,
                 error_message = EXCLUDED.error_message, finished_at = EXCLUDED.finished_at,
                 cache_hit = EXCLUDED.cache_hit, cost_saved = EXCLUDED.cost_saved,
                 not_before = NULL, updated_at = now()
            WHERE jobs.status NOT IN {TERMINAL}
            RETURNING id
         ), deliveries AS (
            INSERT INTO job_deliveries (job_id, kind, target, body)
            SELECT t.job_id, t.kind, t.target, t.body
            FROM UNNEST({deliveries}) AS t(job_id, kind, target, body)
            WHERE t.job_id IN (SELECT id FROM results)
            ON CONFLICT (job_id, kind) DO NOTHING
         ), bodies AS (
            DELETE FROM job_bodies WHERE job_id = ANY({ids})
         )"
    )
}

/// Deferred jobs go back to `queued` only if no other delivery started a call since this
/// one last looked: that delivery's `running` row is left alone.
async fn write_deferred(
    conn: &mut PgConnection,
    deferred: &[&JobDeferred],
) -> Result<(), StoreError> {
    if deferred.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "UPDATE jobs SET deferrals = jobs.deferrals + 1,
             status = CASE WHEN jobs.calls <= t.calls_seen THEN 'queued' ELSE jobs.status END,
             not_before = CASE WHEN jobs.calls <= t.calls_seen THEN t.not_before ELSE jobs.not_before END,
             updated_at = now()
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int[]) AS t(id, not_before, calls_seen)
         WHERE jobs.id = t.id AND jobs.status NOT IN {TERMINAL}"
    ))
    .bind(deferred.iter().map(|d| d.id).collect::<Vec<_>>())
    .bind(deferred.iter().map(|d| stamp(&d.not_before)).collect::<Vec<_>>())
    .bind(deferred.iter().map(|d| int(d.calls_seen)).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How each job's webhook delivery ended, shown on the job.
async fn write_webhooks(
    conn: &mut PgConnection,
    webhooks: &[&WebhookOutcome],
) -> Result<(), StoreError> {
    if webhooks.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE jobs SET webhook_status = t.status, webhook_attempts = t.attempts, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS t(id, status, attempts)
         WHERE jobs.id = t.id",
    )
    .bind(webhooks.iter().map(|w| w.id).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|w| text(&w.status)).collect::<Vec<_>>())
    .bind(webhooks.iter().map(|w| int(w.attempts)).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes a row's timestamp as RFC 3339 with nine fraction digits, the text Postgres reads
/// into a `timestamptz` (rounding to microseconds as it did with chrono's text). chrono's
/// own goes through `fmt` (about 2,500 instructions a stamp, six stamps a job): this puts
/// the digits in place.
fn timestamp<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return t.serialize(s);
    }
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut text[0..4], year.unsigned_abs());
    put_digits(&mut text[5..7], t.month());
    put_digits(&mut text[8..10], t.day());
    put_digits(&mut text[11..13], t.hour());
    put_digits(&mut text[14..16], t.minute());
    put_digits(&mut text[17..19], t.second());
    put_digits(&mut text[20..29], nanos);
    match std::str::from_utf8(&text) {
        Ok(text) => s.serialize_str(text),
        Err(_) => t.serialize(s),
    }
}

/// `n` in decimal, right-aligned in `digits` (zero-padded).
fn put_digits(digits: &mut [u8], mut n: u32) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
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
    use super::*;

    #[test]
    fn row_timestamps_read_back_as_the_same_instant() {
        let stamps = [
            "2026-12-07T03:08:36.123456789Z",
            "2026-01-01T00:00:00Z",
            "1999-12-31T23:59:59.000001Z",
            "0042-02-28T12:34:56.5Z",
        ];
        for stamp in stamps {
            let t: DateTime<Utc> = stamp.parse().unwrap();
            let deferred = JobDeferred {
                id: Uuid::nil(),
                not_before: t,
                calls_seen: 0,
            };
            let row: Value = serde_json::to_value(&deferred).unwrap();
            let text = row["not_before"].as_str().unwrap();
            assert_eq!(
                text.parse::<DateTime<Utc>>().unwrap(),
                t,
                "{stamp} -> {text}"
            );
            assert_eq!(text.len(), 30, "{text}");
        }
    }

    #[test]
    fn dedup_keeps_last_of_each_key() {
        let mut v = vec![(1, 'a'), (2, 'b'), (1, 'c'), (3, 'd'), (2, 'e')];
        dedup_last(&mut v, |x| x.0);
        assert_eq!(v, vec![(1, 'c'), (3, 'd'), (2, 'e')]);
    }
}
