//! `POST /v1/embeddings`: OpenAI's embeddings endpoint, through the queue.
//!
//! The request becomes an embeddings job like any other (priority from
//! `x-sluice-priority`, limits, retries, fallbacks, ledger, cache); this handler waits for
//! the job's end and answers with OpenAI's `list` of embeddings, floats or base64 as the
//! request's `encoding_format` says. A client that goes away cancels nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request};
use axum::response::Response;
use sluice_schemas::Tier;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::job_events;
use crate::routes::chat::{answer, wait_answer};
use crate::submit::{accept, parse_embeddings};
use crate::AppState;

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let header_key = crate::guard::idempotency_header(req.headers())?;
    let priority = match req.headers().get("x-sluice-priority") {
        Some(v) => Some(v.to_str().ok().and_then(Tier::parse).ok_or_else(|| {
            ApiError::bad_request("x-sluice-priority must be critical, high, normal, low or 0-3")
                .param("x-sluice-priority")
        })?),
        None => None,
    };
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let mut body = parse_embeddings(&bytes)?;
    if priority.is_some() {
        body.priority = priority;
    }
    let idempotency_key = header_key.or(body.idempotency_key.clone());
    let (submitted, replayed) = accept(&state, &caller, body, idempotency_key).await?;
    let id = submitted.id;
    let job_header =
        HeaderValue::from_str(&id.to_string()).map_err(|e| ApiError::internal(e.to_string()))?;
    if replayed {
        if let Ok(Some(row)) = state.store.job(id).await {
            if row.status.is_terminal() {
                let mut resp = answer(row.done_event());
                resp.headers_mut().insert("x-sluice-job-id", job_header);
                return Ok(resp);
            }
        }
    }
    let messages = job_events::follow(&state, id).await?;
    let mut resp = wait_answer(&state, id, messages).await?;
    resp.headers_mut().insert("x-sluice-job-id", job_header);
    Ok(resp)
}
