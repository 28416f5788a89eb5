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

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::job_events;
use crate::routes::chat::{answer, read_facade, wait_answer};
use crate::submit::{accept, parse_embeddings};
use crate::AppState;

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (body, idempotency_key) = read_facade(&state, req, parse_embeddings).await?;
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
