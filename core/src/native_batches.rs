//! Native provider batches: the records (tables: `migrations/20270120000001_native_batches.sql`)
//! and [`NativeBackend`], the seam between the api's batch driver (`api/src/native.rs`),
//! which plans, records and follows upstream batches, and the worker crate's provider
//! adapters (`worker/src/native/`), which speak each provider's batch API.
//!
//! A Sluice batch in native mode is split into upstream batches ("groups"): the lines the
//! router sends to one deployment, cut at that provider's limits. A group is recorded
//! (`pending`) with its lines before anything is sent; `submitting` before the create
//! call; `submitted` with the upstream id as soon as the provider answers; `ended` once its
//! results are on the line jobs. The upstream `custom_id` of a line is its job id, so
//! results map back without a lookup table and a restart never mixes lines up.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sluice_schemas::openai::{ChatRequest, Usage};
use sluice_schemas::ErrorClass;
use uuid::Uuid;

use crate::batches::BatchJob;
use crate::store::{Store, StoreError};

/// The worker name native attempts are recorded under (`job_attempts.worker`), so spend
/// reports can tell native calls from live ones.
pub const NATIVE_WORKER: &str = "native-batch";

/// How a batch runs its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchMode {
    /// Each line is a live job.
    #[default]
    Live,
    /// Lines go to the providers' batch APIs.
    Native,
    /// Native when every deployment involved supports it and the window allows it.
    Auto,
}

impl BatchMode {
    pub fn parse(s: &str) -> Option<BatchMode> {
        Some(match s {
            "live" => BatchMode::Live,
            "native" => BatchMode::Native,
            "auto" => BatchMode::Auto,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BatchMode::Live => "live",
            BatchMode::Native => "native",
            BatchMode::Auto => "auto",
        }
    }
}

/// Where routing sends a model group's lines, and what that provider's batch API takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub deployment: String,
    pub provider: String,
    /// `openai`, `azure`, `anthropic`, `gemini`; `None`: no batch API (lines run live).
    pub protocol: Option<&'static str>,
    /// Requests per upstream batch.
    pub max_lines: u32,
    /// Bytes of requests per upstream batch.
    pub max_bytes: u64,
    /// The provider's enqueued-token limit of the deployment: prompt tokens of its
    /// upstream batches in flight at once (`None`: no limit known).
    pub enqueued_tokens: Option<u64>,
}

/// One line as sent upstream: `custom_id` is the line's job id.
#[derive(Debug, Clone)]
pub struct NativeLine {
    pub custom_id: String,
    pub request: ChatRequest,
}

/// An upstream batch the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub upstream_id: String,
    /// The uploaded input file (OpenAI, Azure).
    pub file_id: Option<String>,
}

/// A create call that may have reached the provider without its answer reaching Sluice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCreate {
    /// The group id, sent as the batch's marker where the protocol keeps one.
    pub marker: String,
    /// When the first create call began (Sluice's clock).
    pub since: DateTime<Utc>,
    /// Requests the call sent.
    pub lines: usize,
}

/// How an upstream batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEnd {
    Completed,
    /// The provider failed the whole batch (the reason as it gave it).
    Failed(String),
    Expired,
    Cancelled,
}

/// An upstream batch as last polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPoll {
    /// The provider's own status word.
    pub status: String,
    /// `Some` once the batch is over.
    pub end: Option<UpstreamEnd>,
}

/// One request that succeeded upstream.
#[derive(Debug, Clone)]
pub struct NativeSuccess {
    /// The OpenAI `chat.completion` built from the provider's answer.
    pub completion: Value,
    pub usage: Option<Usage>,
    /// At batch prices; `None` when the deployment has no price.
    pub cost: Option<Decimal>,
    /// The upstream model that answered.
    pub model: String,
}

/// One result line, mapped back by `custom_id`.
#[derive(Debug, Clone)]
pub struct NativeResult {
    pub custom_id: String,
    pub outcome: Result<NativeSuccess, (ErrorClass, String)>,
}

/// A call to a provider's batch API that did not work.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct NativeError {
    pub class: ErrorClass,
    pub message: String,
}

impl NativeError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        NativeError {
            class,
            message: message.into(),
        }
    }

    /// Worth trying again later (the provider or the network had a moment).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.class,
            ErrorClass::RateLimit
                | ErrorClass::Overloaded
                | ErrorClass::Timeout
                | ErrorClass::Server
                | ErrorClass::Connection
                | ErrorClass::TruncatedStream
        )
    }
}

/// The providers' batch APIs, as the api's batch driver uses them. Implemented by
/// `sluice_worker::native::Backend` (the provider adapters live in the worker crate) and
/// handed to the api when it starts.
pub trait NativeBackend: Send + Sync {
    /// The deployment routing picks for a line of `model_group` asking for `tags` (tag
    /// routing, `router_settings.enable_tag_filtering`); `None`: no such group, or no
    /// deployment the tags allow.
    fn place(&self, model_group: &str, tags: &[String]) -> Option<Placement>;

    /// Prompt tokens of `request` on `deployment`, as its enqueued-token limit counts them
    /// (estimated before sending).
    fn prompt_tokens(&self, deployment: &str, request: &ChatRequest) -> u64;

    /// The enqueued-token limit of `deployment` ([`Placement::enqueued_tokens`]).
    fn enqueued_limit(&self, deployment: &str) -> Option<u64>;

    /// `line` as the upstream batch of `deployment` takes it (the body a live call would
    /// send, wrapped in the protocol's line shape); `Err`: the provider cannot take it.
    fn prepare(&self, deployment: &str, line: &NativeLine) -> Result<Value, (ErrorClass, String)>;

    /// Uploads prepared `lines` and creates one upstream batch on `deployment`, marked
    /// with `marker` where the protocol keeps one (OpenAI/Azure metadata, Gemini display
    /// name).
    fn submit<'a>(
        &'a self,
        deployment: &'a str,
        marker: &'a str,
        lines: &'a [Value],
    ) -> BoxFuture<'a, Result<Submitted, NativeError>>;

    /// The upstream batches a create call whose answer was lost may have made, best match
    /// first (empty: none). OpenAI, Azure and Gemini match by the marker; Anthropic keeps
    /// none, so it matches the request count and the creation time (`lost`).
    fn find<'a>(
        &'a self,
        deployment: &'a str,
        lost: &'a LostCreate,
    ) -> BoxFuture<'a, Result<Vec<Submitted>, NativeError>>;

    fn poll<'a>(
        &'a self,
        deployment: &'a str,
        upstream_id: &'a str,
    ) -> BoxFuture<'a, Result<UpstreamPoll, NativeError>>;

    /// Every result line of an ended upstream batch (successes and per-line errors; lines
    /// the provider expired or cancelled are left out: they did not run).
    fn results<'a>(
        &'a self,
        deployment: &'a str,
        upstream_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<NativeResult>, NativeError>>;

    fn cancel<'a>(
        &'a self,
        deployment: &'a str,
        upstream_id: &'a str,
    ) -> BoxFuture<'a, Result<(), NativeError>>;
}

/// The state of an upstream batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Pending,
    Submitting,
    Submitted,
    Ended,
}

impl GroupState {
    pub fn parse(s: &str) -> GroupState {
        match s {
            "pending" => GroupState::Pending,
            "submitting" => GroupState::Submitting,
            "submitted" => GroupState::Submitted,
            _ => GroupState::Ended,
        }
    }
}

/// Protocol name of lines that run live (a deployment without a batch API).
pub const LIVE_GROUP: &str = "live";

/// An upstream batch as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    pub id: String,
    pub batch_id: String,
    pub seq: i32,
    pub deployment: String,
    pub provider: String,
    pub protocol: String,
    pub lines: i32,
    pub bytes: i64,
    /// Estimated prompt tokens (counted only for deployments with an enqueued-token limit).
    pub tokens: i64,
    pub state: String,
    pub upstream_id: Option<String>,
    pub upstream_file_id: Option<String>,
    pub upstream_status: Option<String>,
    pub error: Option<String>,
    pub rerun_live: i32,
    pub created_at: DateTime<Utc>,
    pub submitting_at: Option<DateTime<Utc>>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl GroupRow {
    pub fn state(&self) -> GroupState {
        GroupState::parse(&self.state)
    }
}

/// An upstream batch being planned.
#[derive(Debug, Clone, Serialize)]
pub struct NewGroup {
    pub id: String,
    pub batch_id: String,
    pub seq: i32,
    pub deployment: String,
    pub provider: String,
    pub protocol: String,
    pub lines: i32,
    pub bytes: i64,
    pub tokens: i64,
}

/// A line job of a native batch: the job row and the upstream batch it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct NativeJob {
    #[serde(flatten)]
    pub job: BatchJob,
    pub native_batch: Option<String>,
}

/// A line job waiting for its upstream result.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WaitingLine {
    pub id: Uuid,
    pub batch_line: i32,
    pub owner: String,
    pub model_group: String,
    pub tier: String,
    pub created_at: DateTime<Utc>,
}

const GROUP_COLUMNS: &str =
    "id, batch_id, seq, deployment, provider, protocol, lines, bytes, tokens, state,
    upstream_id, upstream_file_id, upstream_status, error, rerun_live, created_at, submitting_at,
    submitted_at, ended_at";

impl Store {
    /// The batch's upstream batches, in plan order.
    pub async fn native_groups(&self, batch_id: &str) -> Result<Vec<GroupRow>, StoreError> {
        Ok(sqlx::query_as::<_, GroupRow>(&format!(
            "SELECT {GROUP_COLUMNS} FROM native_batches WHERE batch_id = $1 ORDER BY seq"
        ))
        .bind(batch_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Settles the batch's mode (`live` or `native`) while holding its lease.
    pub async fn set_batch_mode(
        &self,
        id: &str,
        holder: &str,
        mode: BatchMode,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE batches SET mode = $3 WHERE id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(holder)
            .bind(mode.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a native plan in one transaction: the line jobs (each naming its upstream
    /// batch), the upstream batches (`pending`), the mode and the ingestion cursor. Either
    /// all of it is recorded or none, so a driver that dies while planning plans again.
    pub async fn record_native_plan(
        &self,
        batch_id: &str,
        holder: &str,
        total: u32,
        groups: &[NewGroup],
        jobs: &[NativeJob],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let held = sqlx::query(
            "UPDATE batches SET mode = 'native', ingested = $3 WHERE id = $1 AND lease_owner = $2",
        )
        .bind(batch_id)
        .bind(holder)
        .bind(total as i32)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() == 0 {
            return Ok(false);
        }
        if !groups.is_empty() {
            sqlx::query(
                "INSERT INTO native_batches (id, batch_id, seq, deployment, provider, protocol, lines,
                     bytes, tokens, state)
                 SELECT id, batch_id, seq, deployment, provider, protocol, lines, bytes, tokens,
                     'pending'
                 FROM jsonb_to_recordset($1::jsonb) AS t(id text, batch_id text, seq int,
                     deployment text, provider text, protocol text, lines int, bytes bigint,
                     tokens bigint)
                 ON CONFLICT DO NOTHING",
            )
            .bind(crate::pgtext::rows_param(groups, &[])?)
            .execute(&mut *tx)
            .await?;
        }
        for chunk in jobs.chunks(2000) {
            sqlx::query(
                "INSERT INTO jobs (id, owner, model_group, tier, status, metadata, created_at, batch_id,
                      batch_line, custom_id, error_class, error_message, finished_at, native_batch)
                 SELECT id, owner, model_group, tier, status, metadata, created_at, batch_id, batch_line,
                      custom_id, error_class, error_message, finished_at, native_batch
                 FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, owner text, model_group text,
                      tier text, status text, metadata jsonb, created_at timestamptz, batch_id text,
                      batch_line int, custom_id text, error_class text, error_message text,
                      finished_at timestamptz, native_batch text)
                 ON CONFLICT DO NOTHING",
            )
            .bind(crate::pgtext::rows_param(chunk, &[])?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Prompt tokens of `deployment`'s upstream batches in flight (being submitted or
    /// submitted, not ended), across every batch: what its enqueued-token limit counts.
    pub async fn native_enqueued(&self, deployment: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(tokens)::bigint FROM native_batches
             WHERE deployment = $1 AND state IN ('submitting', 'submitted')",
        )
        .bind(deployment)
        .fetch_one(self.pool())
        .await?
        .unwrap_or(0))
    }

    /// The create call is about to be made.
    pub async fn native_submitting(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE native_batches SET state = 'submitting', submitting_at = now()
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether another upstream batch record already holds `upstream_id` (so a look-up
    /// after a lost create call never takes a batch that is someone else's).
    pub async fn native_upstream_taken(
        &self,
        id: &str,
        upstream_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM native_batches WHERE upstream_id = $2 AND id <> $1)",
        )
        .bind(id)
        .bind(upstream_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// The provider accepted the upstream batch.
    pub async fn native_submitted(&self, id: &str, s: &Submitted) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE native_batches SET state = 'submitted', upstream_id = $2, upstream_file_id = $3,
                 submitted_at = COALESCE(submitted_at, now())
             WHERE id = $1 AND state IN ('pending', 'submitting')",
        )
        .bind(id)
        .bind(&s.upstream_id)
        .bind(&s.file_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The provider's status word, as last polled.
    pub async fn native_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE native_batches SET upstream_status = $2 WHERE id = $1 AND upstream_status IS DISTINCT FROM $2",
        )
        .bind(id)
        .bind(status)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The upstream batch is done with: its results are on the line jobs.
    pub async fn native_ended(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
        rerun_live: u32,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE native_batches SET state = 'ended', upstream_status = $2, error = $3,
                 rerun_live = $4, ended_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(rerun_live as i32)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The group's lines still waiting for a result, in line order.
    pub async fn native_waiting(&self, group: &str) -> Result<Vec<WaitingLine>, StoreError> {
        Ok(sqlx::query_as::<_, WaitingLine>(
            "SELECT id, batch_line, owner, model_group, tier, created_at FROM jobs
             WHERE native_batch = $1 AND status = 'queued' AND batch_seq IS NULL AND calls = 0
             ORDER BY batch_line",
        )
        .bind(group)
        .fetch_all(self.pool())
        .await?)
    }

    /// Ends the group's lines still waiting (never published) as `status`.
    pub async fn end_native_lines(&self, group: &str, status: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = $2, finished_at = now(), updated_at = now()
             WHERE native_batch = $1 AND status = 'queued' AND batch_seq IS NULL AND calls = 0",
        )
        .bind(group)
        .bind(status)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_unknown_ones_are_refused() {
        for m in [BatchMode::Live, BatchMode::Native, BatchMode::Auto] {
            assert_eq!(BatchMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(BatchMode::parse("cheap"), None);
    }
}
