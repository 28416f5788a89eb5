//! Provider calls on record (`job_attempts`), as `GET /v1/jobs/{id}/attempts` shows them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sluice_schemas::{AttemptStatus, ErrorClass};
use uuid::Uuid;

use super::{Store, StoreError};

/// One provider call of a job, as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    #[sqlx(try_from = "i32")]
    pub attempt: u32,
    pub deployment: String,
    pub provider: String,
    pub model: String,
    pub status: AttemptStatus,
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

impl Store {
    /// The job's provider calls, in attempt order.
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
}
