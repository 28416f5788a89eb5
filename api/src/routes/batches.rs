//! `POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/batches` (newest first, paginated
//! with `after`/`limit`), `POST /v1/batches/{id}/cancel` — OpenAI's Batch API. The work is
//! done by [`crate::batches`]; these handlers record intent and read progress. A caller
//! sees only its own batches (404 otherwise).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::Request;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_core::batches::{BatchRow, LineCounts, NewBatch};
use sluice_core::native_batches::{BatchMode, GroupRow};
use sluice_schemas::batch::{
    Batch, BatchErrors, BatchList, BatchProgress, BatchStatus, RequestCounts, CHAT_COMPLETIONS,
    EMBEDDINGS,
};
use sluice_schemas::Tier;
use uuid::Uuid;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

/// Longest `completion_window` accepted.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;
/// The `metadata` key that picks a batch's mode (`live`, `native`, `auto`).
const MODE_KEY: &str = "sluice_mode";

#[derive(Debug, Deserialize)]
struct CreateBody {
    input_file_id: Option<String>,
    endpoint: Option<String>,
    completion_window: Option<String>,
    metadata: Option<Map<String, Value>>,
    /// Sluice: the tier the batch's lines run at (default `low`).
    priority: Option<Tier>,
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "batch storage failed");
    ApiError::unavailable("cannot read or record batches right now")
}

/// `24h`, `30m`, `90s`, `2d` (OpenAI accepts only `24h`; shorter windows help tests and
/// urgent pipelines).
pub fn parse_window(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    let d = Duration::from_secs(secs);
    (secs > 0 && d <= MAX_WINDOW).then_some(d)
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    req: Request<Body>,
) -> Result<Json<Batch>, ApiError> {
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let body: CreateBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let input_file_id = body
        .input_file_id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("missing required field `input_file_id`").param("input_file_id")
        })?;
    let endpoint = body.endpoint.unwrap_or_else(|| CHAT_COMPLETIONS.into());
    if endpoint != CHAT_COMPLETIONS && endpoint != EMBEDDINGS {
        return Err(ApiError::bad_request(format!(
            "endpoint {endpoint:?} is not supported; Sluice batches run {CHAT_COMPLETIONS} and {EMBEDDINGS}"
        ))
        .param("endpoint"));
    }
    let window = body.completion_window.unwrap_or_else(|| "24h".into());
    let Some(window_len) = parse_window(&window) else {
        return Err(ApiError::bad_request(format!(
            "completion_window {window:?} is not valid: use e.g. \"24h\" (at most 7d)"
        ))
        .param("completion_window"));
    };
    let file = crate::routes::files::load(&state, &caller, &input_file_id)
        .await
        .map_err(|e| e.param("input_file_id"))?;
    if file.purpose != "batch" {
        return Err(ApiError::bad_request(format!(
            "file {input_file_id} has purpose {:?}; a batch input needs purpose \"batch\"",
            file.purpose
        ))
        .param("input_file_id"));
    }
    let mode = match body.metadata.as_ref().and_then(|m| m.get(MODE_KEY)) {
        None => state.config.batches.default_mode,
        Some(v) => v.as_str().and_then(BatchMode::parse).ok_or_else(|| {
            ApiError::bad_request(format!(
                "metadata.{MODE_KEY} must be \"live\", \"native\" or \"auto\", not {v}"
            ))
            .param(format!("metadata.{MODE_KEY}"))
        })?,
    };
    let uuid = Uuid::now_v7();
    let now = Utc::now();
    let new = NewBatch {
        id: format!("batch_{}", uuid.simple()),
        owner: caller.owner.clone(),
        endpoint,
        input_file_id,
        completion_window: window,
        tier: body.priority.unwrap_or(Tier::Low),
        metadata: body.metadata.map(Value::Object),
        expires_at: now + chrono::Duration::from_std(window_len).unwrap_or_default(),
        mode,
        traceparent: sluice_core::telemetry::current_traceparent(),
    };
    state.store.insert_batch(&new).await.map_err(store_error)?;
    let row = load(&state, &caller, &new.id).await?;
    state.batch_wake.notify_one();
    Ok(Json(batch_object(&row, LineCounts::default(), &[])))
}

async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<BatchRow, ApiError> {
    match state.store.batch(id).await.map_err(store_error)? {
        Some(row) if caller.may_see(&row.owner) => Ok(row),
        _ => Err(ApiError::not_found(format!("no such batch: {id}")).param("batch_id")),
    }
}

async fn with_counts(state: &AppState, row: BatchRow) -> Result<Batch, ApiError> {
    let counts = state
        .store
        .line_counts(&row.id)
        .await
        .map_err(store_error)?;
    let groups = if row.mode == BatchMode::Live.as_str() {
        Vec::new()
    } else {
        state
            .store
            .native_groups(&row.id)
            .await
            .map_err(store_error)?
    };
    Ok(batch_object(&row, counts, &groups))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let row = load(&state, &caller, &id).await?;
    Ok(Json(with_counts(&state, row).await?))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<BatchList>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let owner = (!caller.is_master()).then_some(caller.owner.as_str());
    let mut rows = state
        .store
        .list_batches(owner, q.after.as_deref(), limit + 1)
        .await
        .map_err(store_error)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        data.push(with_counts(&state, row).await?);
    }
    Ok(Json(BatchList {
        object: "list".into(),
        first_id: data.first().map(|b| b.id.clone()),
        last_id: data.last().map(|b| b.id.clone()),
        has_more,
        data,
    }))
}

/// Stops queued lines (the driver does the work); running lines finish. Cancelling a
/// batch that already ended answers 409.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    load(&state, &caller, &id).await?;
    let row = state
        .store
        .request_batch_cancel(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no such batch: {id}")))?;
    match row.status {
        BatchStatus::Cancelling | BatchStatus::Cancelled => {}
        _ => {
            return Err(ApiError::conflict(format!(
                "batch {id} cannot be cancelled: it is {}",
                row.status
            )))
        }
    }
    state.batch_wake.notify_one();
    Ok(Json(with_counts(&state, row).await?))
}

/// The OpenAI batch object, with live counts and, for a native batch, its upstream
/// batches.
pub fn batch_object(row: &BatchRow, counts: LineCounts, groups: &[GroupRow]) -> Batch {
    let ts = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp());
    let errors = row
        .errors
        .clone()
        .and_then(|e| serde_json::from_value::<BatchErrors>(e).ok());
    let n = |x: i64| x.max(0) as u64;
    Batch {
        id: row.id.clone(),
        object: "batch".into(),
        endpoint: row.endpoint.clone(),
        errors,
        input_file_id: row.input_file_id.clone(),
        completion_window: row.completion_window.clone(),
        status: row.status,
        output_file_id: row.output_file_id.clone(),
        error_file_id: row.error_file_id.clone(),
        created_at: row.created_at.timestamp(),
        in_progress_at: ts(row.in_progress_at),
        expires_at: Some(row.expires_at.timestamp()),
        finalizing_at: ts(row.finalizing_at),
        completed_at: ts(row.completed_at),
        failed_at: ts(row.failed_at),
        expired_at: ts(row.expired_at),
        cancelling_at: ts(row.cancelling_at),
        cancelled_at: ts(row.cancelled_at),
        request_counts: RequestCounts {
            total: n(i64::from(row.total)),
            completed: n(counts.succeeded),
            failed: n(counts.unsuccessful()),
        },
        metadata: match &row.metadata {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        },
        priority: Some(row.tier.as_str().to_string()),
        progress: Some(BatchProgress {
            ingested: n(i64::from(row.ingested)),
            queued: n(counts.queued),
            running: n(counts.running),
            cancelled: n(counts.cancelled),
            expired: n(counts.expired),
        }),
        mode: Some(row.mode.clone()),
        upstream: (!groups.is_empty()).then(|| crate::native::upstream_view(groups)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_window;
    use std::time::Duration;

    #[test]
    fn completion_windows() {
        assert_eq!(parse_window("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_window("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_window("0h"), None);
        assert_eq!(parse_window("8d"), None);
        assert_eq!(parse_window("soon"), None);
        assert_eq!(parse_window(""), None);
    }
}
