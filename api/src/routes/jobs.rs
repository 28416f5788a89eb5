//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events`,
//! `POST /v1/jobs/{id}/cancel`. A caller sees only its own jobs (404 otherwise).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use sluice_core::store::{AttemptRow, JobRow};
use sluice_schemas::events::HEADER_EVENT;
use sluice_schemas::{AttemptStatus, ErrorClass, EventKind, JobStatus, Tier};
use uuid::Uuid;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;
use crate::{job_events, submit};

pub async fn submit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let header_key = crate::guard::idempotency_header(req.headers())?;
    let routing = crate::routes::chat::RoutingHeaders::read(&state.config, req.headers())?;
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let mut body = submit::parse_job(&bytes)?;
    routing.apply(&mut body);
    let idempotency_key = header_key.or(body.idempotency_key.clone());
    let (response, replayed) = submit::accept(&state, &caller, body, idempotency_key).await?;
    let mut resp = if replayed {
        (StatusCode::OK, Json(response)).into_response()
    } else {
        (StatusCode::ACCEPTED, Json(response)).into_response()
    };
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no job {raw:?}")).param("id"))
}

async fn load_job(state: &AppState, caller: &Caller, id: Uuid) -> Result<JobRow, ApiError> {
    match state.store.job(id).await {
        Ok(Some(row)) if caller.may_see(&row.owner) => Ok(row),
        Ok(_) => Err(ApiError::not_found(format!("no job {id}")).param("id")),
        Err(e) => {
            tracing::error!(error = %e, "job lookup failed");
            Err(ApiError::unavailable("cannot read jobs right now"))
        }
    }
}

#[derive(Debug, Serialize)]
struct JobView {
    id: Uuid,
    object: &'static str,
    status: JobStatus,
    model: String,
    priority: Tier,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    not_before: Option<i64>,
    queue_wait_ms: Option<i64>,
    run_ms: Option<i64>,
    attempts: u32,
    result: Option<Value>,
    usage: Option<Value>,
    /// USD across all attempts; null when a price is missing.
    #[serde(with = "rust_decimal::serde::float_option")]
    cost: Option<rust_decimal::Decimal>,
    pricing_missing: bool,
    /// Answered from the response cache: no provider call, `cost` 0.
    cache_hit: bool,
    /// What the calls the cache replaced cost (a partly cached embeddings job too).
    #[serde(
        with = "rust_decimal::serde::float_option",
        skip_serializing_if = "Option::is_none"
    )]
    cost_saved: Option<rust_decimal::Decimal>,
    error: Option<ErrorView>,
    metadata: Option<Value>,
    /// The `x-request-id` of the request that submitted the job (`api/src/access.rs`).
    request_id: Option<String>,
    attempt_log: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
struct ErrorView {
    class: ErrorClass,
    message: String,
}

#[derive(Debug, Serialize)]
struct AttemptView {
    attempt: u32,
    deployment: String,
    provider: String,
    model: String,
    status: AttemptStatus,
    error: Option<ErrorView>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cached_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
    usage_estimated: bool,
    #[serde(with = "rust_decimal::serde::float_option")]
    cost: Option<rust_decimal::Decimal>,
    pricing_missing: bool,
    ttft_ms: Option<f64>,
    latency_ms: Option<f64>,
    started_at: i64,
    /// Parameters the provider cannot take, dropped because `drop_params` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_params: Option<Vec<String>>,
}

fn job_view(row: JobRow, attempts: Vec<AttemptRow>) -> JobView {
    let ms = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a).num_milliseconds()),
        _ => None,
    };
    JobView {
        id: row.id,
        object: "sluice.job",
        queue_wait_ms: ms(Some(row.created_at), row.started_at),
        run_ms: ms(row.started_at, row.finished_at),
        status: row.status,
        model: row.model_group,
        priority: row.tier,
        created_at: row.created_at.timestamp(),
        started_at: row.started_at.map(|t| t.timestamp()),
        finished_at: row.finished_at.map(|t| t.timestamp()),
        not_before: row.not_before.map(|t| t.timestamp()),
        attempts: row.attempts,
        result: row.result,
        usage: row.usage,
        cost: row.cost,
        pricing_missing: row.pricing_missing,
        cache_hit: row.cache_hit,
        cost_saved: row.cost_saved,
        error: row.error_class.map(|class| ErrorView {
            class,
            message: row.error_message.unwrap_or_default(),
        }),
        metadata: row.metadata,
        request_id: row.request_id,
        attempt_log: attempts
            .into_iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                deployment: a.deployment,
                provider: a.provider,
                model: a.model,
                status: a.status,
                error: a.error_class.map(|class| ErrorView {
                    class,
                    message: a.error_message.unwrap_or_default(),
                }),
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                cached_tokens: a.cached_tokens,
                reasoning_tokens: a.reasoning_tokens,
                usage_estimated: a.usage_estimated,
                cost: a.cost,
                pricing_missing: a.pricing_missing,
                ttft_ms: a.ttft_ms,
                latency_ms: a.latency_ms,
                started_at: a.started_at.timestamp(),
                dropped_params: a.dropped_params.map(|j| j.0),
            })
            .collect(),
    }
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let row = load_job(&state, &caller, id).await?;
    let attempts = state
        .store
        .attempts(id)
        .await
        .map_err(|_| ApiError::unavailable("cannot read jobs right now"))?;
    let view = serde_json::to_value(job_view(row, attempts))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(view))
}

/// SSE bridge of `<prefix>.events.<id>`, replayed from the start: chunks as `data:` in
/// OpenAI framing, `event: retry` and `event: done`/`event: error` for the rest, then
/// `data: [DONE]`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&raw)?;
    let row = load_job(&state, &caller, id).await?;
    let finished = row.status.is_terminal();

    let permit = state
        .streams
        .acquire(&caller.owner, state.config.safety.max_streams_per_key)?;
    let messages = job_events::follow(&state, id).await?;

    let out = crate::streams::bounded(
        event_stream(messages, finished, row, state.store.clone()),
        permit,
        state.config.safety.max_stream_bytes,
    );
    let out = job_events::until_shutdown(out, &state.shutdown, id);
    Ok(Sse::new(out).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Turns the job's NATS events into SSE events until the terminal one. A finished job's
/// events may have aged out of the stream: once the replay goes quiet, its result is
/// answered from the row.
fn event_stream(
    messages: consumer::push::Ordered,
    finished: bool,
    row: JobRow,
    store: sluice_core::Store,
) -> impl Stream<Item = (Result<Event, Infallible>, usize)> {
    futures::stream::unfold(Some((messages, row)), move |state| {
        let store = store.clone();
        async move {
            let (mut messages, row) = state?;
            loop {
                let next = if finished {
                    tokio::time::timeout(Duration::from_millis(500), messages.next())
                        .await
                        .unwrap_or_default()
                } else {
                    messages.next().await
                };
                let Some(Ok(msg)) = next else {
                    let events = if finished {
                        terminal_from_row(&row)
                    } else {
                        vec![Event::default().data("[DONE]")]
                    };
                    return Some(((events, 0), None));
                };
                let kind = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HEADER_EVENT))
                    .and_then(|v| EventKind::parse(v.as_str()));
                let data = String::from_utf8_lossy(&msg.payload).into_owned();
                let size = data.len();
                match kind {
                    Some(EventKind::Chunk) => {
                        return Some((
                            (vec![Event::default().data(data)], size),
                            Some((messages, row)),
                        ))
                    }
                    Some(EventKind::Retry) => {
                        return Some((
                            (vec![Event::default().event("retry").data(data)], size),
                            Some((messages, row)),
                        ))
                    }
                    Some(k) if k.is_terminal() => {
                        // Too large for a message: the whole event is the job's row.
                        let by_ref = msg
                            .headers
                            .as_ref()
                            .is_some_and(|h| h.get(sluice_core::bodies::HEADER_BODY_REF).is_some());
                        if by_ref {
                            if let Ok(Some(fresh)) = store.job(row.id).await {
                                return Some(((terminal_from_row(&fresh), 0), None));
                            }
                        }
                        let events = vec![
                            Event::default().event(k.as_str()).data(data),
                            Event::default().data("[DONE]"),
                        ];
                        return Some(((events, 0), None));
                    }
                    _ => continue,
                }
            }
        }
    })
    .flat_map(|(events, size)| {
        // The size counts once per message, on its first event.
        let sizes = std::iter::once(size).chain(std::iter::repeat(0));
        futures::stream::iter(events.into_iter().map(Ok).zip(sizes))
    })
}

fn terminal_from_row(row: &JobRow) -> Vec<Event> {
    let done = row.done_event();
    let kind = if done.status == JobStatus::Succeeded {
        "done"
    } else {
        "error"
    };
    let data = serde_json::to_string(&done).unwrap_or_default();
    vec![
        Event::default().event(kind).data(data),
        Event::default().data("[DONE]"),
    ]
}

/// `POST /v1/jobs/{id}/cancel`: marks a job that has not finished as `cancelled`. A job
/// that already finished answers 409; someone else's job answers 404.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let row = load_job(&state, &caller, id).await?;
    if row.status.is_terminal() {
        return Err(ApiError::conflict(format!(
            "job {id} already finished ({})",
            row.status
        )));
    }
    let cancelled = state.store.cancel_job(id).await.map_err(|e| {
        tracing::error!(error = %e, "cancel failed");
        ApiError::unavailable("cannot cancel jobs right now")
    })?;
    if !cancelled {
        return Err(ApiError::conflict(format!("job {id} already finished")));
    }
    // Tell every worker: admission skips it, a running call stops.
    if let Err(e) =
        sluice_core::cancel::mark(&state.redis, &state.config.subject_prefix, &[id]).await
    {
        tracing::warn!(job_id = %id, error = %e, "cancel not marked in Redis; a worker may still run it");
    }
    if let Err(e) = state
        .nats
        .publish(state.subjects.cancel(id), bytes::Bytes::new())
        .await
    {
        tracing::warn!(job_id = %id, error = %e, "cancel notice not published");
    }
    let row = load_job(&state, &caller, id).await?;
    let attempts = state
        .store
        .attempts(id)
        .await
        .map_err(|_| ApiError::unavailable("cannot read jobs right now"))?;
    let view = serde_json::to_value(job_view(row, attempts))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(view))
}
