//! `POST /v1/chat/completions`: the OpenAI-compatible synchronous facade.
//!
//! The request becomes a job like any other (queue, priority from `x-sluice-priority`,
//! limits, retries, fallbacks, ledger); this handler then follows the job's events and
//! answers in OpenAI's shapes: one `chat.completion`, or SSE `chat.completion.chunk`s
//! ending with `data: [DONE]`. A client that goes away cancels nothing: the job finishes
//! and is recorded. Unmodified OpenAI SDKs work against `base_url=http://host/v1`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::Value;
use sluice_schemas::events::{HEADER_ATTEMPT, HEADER_EVENT};
use sluice_schemas::{DoneEvent, ErrorClass, EventKind, JobStatus, Tier};

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::job_events;
use crate::submit::{accept, parse_submit, SubmitBody};
use crate::AppState;

/// The longest a synchronous caller waits; the job itself goes on.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// Reads a synchronous facade's request (chat, embeddings): the `Idempotency-Key`,
/// `x-sluice-priority` and routing ([`RoutingHeaders`]) headers and the body, bounded by
/// `max_body_bytes` and parsed by `parse`. Returns the job body (the header priority wins)
/// and its idempotency key.
pub(crate) async fn read_facade(
    state: &AppState,
    req: Request<Body>,
    parse: fn(&[u8]) -> Result<SubmitBody, ApiError>,
) -> Result<(SubmitBody, Option<String>), ApiError> {
    let header_key = crate::guard::idempotency_header(req.headers())?;
    let priority = match req.headers().get("x-sluice-priority") {
        Some(v) => Some(v.to_str().ok().and_then(Tier::parse).ok_or_else(|| {
            ApiError::bad_request("x-sluice-priority must be critical, high, normal, low or 0-3")
                .param("x-sluice-priority")
        })?),
        None => None,
    };
    let routing = RoutingHeaders::read(&state.config, req.headers())?;
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let mut body = parse(&bytes)?;
    if priority.is_some() {
        body.priority = priority;
    }
    routing.apply(&mut body);
    let idempotency_key = header_key.or(body.idempotency_key.clone());
    Ok((body, idempotency_key))
}

/// The longest `User-Agent` kept for `tag_regex` routing.
const MAX_USER_AGENT: usize = 512;

/// LiteLLM's routing headers on a submission: `x-litellm-tags` (comma-separated, spaces
/// trimmed) adds to the request's `tags`; the `User-Agent` goes with the job when tag
/// filtering is on and a deployment routes by `tag_regex` (`worker/src/job/eligible.rs`).
pub(crate) struct RoutingHeaders {
    tags: Vec<String>,
    user_agent: Option<String>,
}

impl RoutingHeaders {
    /// Reads them from `headers` (before the body is read).
    pub(crate) fn read(
        config: &sluice_core::Config,
        headers: &axum::http::HeaderMap,
    ) -> Result<RoutingHeaders, ApiError> {
        let tags = match headers.get("x-litellm-tags") {
            Some(v) => v
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request("x-litellm-tags must be comma-separated text")
                        .param("x-litellm-tags")
                })?
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        };
        let regex_routing = config.router.tag_filtering
            && config.deployments.iter().any(|d| !d.tag_regex.is_empty());
        let user_agent = headers
            .get(axum::http::header::USER_AGENT)
            .filter(|_| regex_routing)
            .and_then(|v| v.to_str().ok())
            .map(|ua| {
                let mut end = ua.len().min(MAX_USER_AGENT);
                while !ua.is_char_boundary(end) {
                    end -= 1;
                }
                ua[..end].to_string()
            });
        Ok(RoutingHeaders { tags, user_agent })
    }

    /// Adds them to the submission `body`.
    pub(crate) fn apply(self, body: &mut SubmitBody) {
        body.user_agent = self.user_agent;
        if self.tags.is_empty() {
            return;
        }
        let extra = match body.embeddings.as_mut() {
            Some(e) => &mut e.extra,
            None => &mut body.request.extra,
        };
        let tags = extra.entry("tags").or_insert(Value::Null);
        if tags.is_null() {
            *tags = Value::Array(Vec::new());
        }
        // A `tags` that is not a list is refused by the body's own check, naming it.
        if let Value::Array(list) = tags {
            for t in self.tags {
                if !list.iter().any(|have| have.as_str() == Some(t.as_str())) {
                    list.push(Value::String(t));
                }
            }
        }
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (body, idempotency_key) = read_facade(&state, req, parse_submit).await?;
    let stream = body.request.stream.unwrap_or(false);
    let include_usage = body.request.stream_options.is_some_and(|o| o.include_usage);
    let (submitted, replayed) = accept(&state, &caller, body, idempotency_key).await?;
    let id = submitted.id;
    let job_header =
        HeaderValue::from_str(&id.to_string()).map_err(|e| ApiError::internal(e.to_string()))?;
    if replayed && !stream {
        // A repeated Idempotency-Key: the job that key made answers, from its row once it
        // has ended (its events may have aged out).
        if let Ok(Some(row)) = state.store.job(id).await {
            if row.status.is_terminal() {
                let mut resp = answer(row.done_event());
                resp.headers_mut().insert("x-sluice-job-id", job_header);
                return Ok(resp);
            }
        }
    }
    let messages = job_events::follow(&state, id).await?;

    if stream {
        let permit = state
            .streams
            .acquire(&caller.owner, state.config.safety.max_streams_per_key)?;
        let events = crate::streams::bounded(
            chunks(messages, include_usage).map(|e| (e, 0)),
            permit,
            state.config.safety.max_stream_bytes,
        );
        let events = job_events::until_shutdown(events, &state.shutdown, id);
        let mut resp = Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response();
        resp.headers_mut().insert("x-sluice-job-id", job_header);
        return Ok(resp);
    }

    let mut resp = wait_answer(&state, id, messages).await?;
    resp.headers_mut().insert("x-sluice-job-id", job_header);
    Ok(resp)
}

/// Waits (at most [`MAX_WAIT`], or until shutdown) for job `id`'s end and answers with its
/// result, or the error for its class. Shared by `routes/embeddings.rs`.
pub(crate) async fn wait_answer(
    state: &AppState,
    id: uuid::Uuid,
    messages: async_nats::jetstream::consumer::push::Ordered,
) -> Result<Response, ApiError> {
    let waited = tokio::select! {
        w = tokio::time::timeout(MAX_WAIT, terminal(messages)) => w,
        _ = state.shutdown.cancelled() => {
            return Err(ApiError::unavailable(format!(
                "the api is shutting down; job {id} goes on, follow it at /v1/jobs/{id}"
            ))
            .code("shutting_down"));
        }
    };
    let done = waited
        .map_err(|_| {
            ApiError::unavailable(format!(
                "job {id} is still running; follow it at /v1/jobs/{id}"
            ))
            .code("timeout")
        })?
        .ok_or_else(|| ApiError::unavailable("the job's events ended without a result"))?;
    // A result too large for a message came by reference: the row has it.
    let done = match (done.status, &done.result) {
        (JobStatus::Succeeded, None) => match state.store.job(id).await {
            Ok(Some(row)) => row.done_event(),
            _ => done,
        },
        _ => done,
    };
    Ok(answer(done))
}

/// A finished job as the OpenAI answer: its result, or the error for its class.
pub(crate) fn answer(done: DoneEvent) -> Response {
    match (done.status, done.result) {
        (JobStatus::Succeeded, Some(result)) => Json(result).into_response(),
        (_, _) => error_response(done.error.as_ref().map(|e| (e.class, e.message.as_str()))),
    }
}

/// Waits for the job's terminal event.
async fn terminal(
    mut messages: async_nats::jetstream::consumer::push::Ordered,
) -> Option<DoneEvent> {
    while let Some(Ok(msg)) = messages.next().await {
        let kind = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_EVENT))
            .and_then(|v| EventKind::parse(v.as_str()));
        if kind.is_some_and(EventKind::is_terminal) {
            return serde_json::from_slice(&msg.payload).ok();
        }
    }
    None
}

/// The job's chunks as OpenAI SSE, ending with `[DONE]` (or an error object).
///
/// Chunks of an attempt that failed before sending anything are invisible to the client.
/// If an attempt fails after some of its chunks went out, those cannot be taken back: the
/// client is told with an SSE comment and the next attempt's chunks follow.
fn chunks(
    messages: async_nats::jetstream::consumer::push::Ordered,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(messages), move |state| async move {
        let mut messages = state?;
        loop {
            let msg = match messages.next().await {
                Some(Ok(msg)) => msg,
                _ => return Some((vec![Event::default().data("[DONE]")], None)),
            };
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            match header(HEADER_EVENT).as_deref().and_then(EventKind::parse) {
                Some(EventKind::Chunk) => {
                    if !include_usage && is_usage_only(&msg.payload) {
                        continue;
                    }
                    let data = String::from_utf8_lossy(&msg.payload).into_owned();
                    return Some((vec![Event::default().data(data)], Some(messages)));
                }
                Some(EventKind::Retry) => {
                    let attempt = header(HEADER_ATTEMPT).unwrap_or_default();
                    return Some((
                        vec![Event::default()
                            .comment(format!("sluice: attempt {attempt} failed; retrying"))],
                        Some(messages),
                    ));
                }
                Some(EventKind::Done) => {
                    return Some((vec![Event::default().data("[DONE]")], None))
                }
                Some(EventKind::Error) => {
                    let done: Option<DoneEvent> = serde_json::from_slice(&msg.payload).ok();
                    let (class, message) = done
                        .as_ref()
                        .and_then(|d| d.error.as_ref())
                        .map(|e| (e.class, e.message.clone()))
                        .unwrap_or((ErrorClass::Internal, "the job failed".into()));
                    let body =
                        serde_json::to_string(&class.error_body(message)).unwrap_or_default();
                    return Some((
                        vec![Event::default().data(body), Event::default().data("[DONE]")],
                        None,
                    ));
                }
                None => continue,
            }
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
}

/// The usage chunk (`"choices": []`), sent only to clients that asked for it.
fn is_usage_only(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload)
        .map(|v| v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object())
        .unwrap_or(false)
}

/// A failed job as the HTTP error an OpenAI client expects for its class.
fn error_response(error: Option<(ErrorClass, &str)>) -> Response {
    let (class, message) = error.unwrap_or((ErrorClass::Internal, "the job failed"));
    let status =
        StatusCode::from_u16(class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(class.error_body(message))).into_response()
}
