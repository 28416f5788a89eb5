//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events`,
//! `POST /v1/jobs/{id}/cancel`. A caller sees only its own jobs (404 otherwise).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_core::store::{AttemptRow, JobRow, NewJob, Recorded};
use sluice_schemas::events::HEADER_EVENT;
use sluice_schemas::openai::{ChatRequest, Content};
use sluice_schemas::{EventKind, JobEnvelope, JobStatus, Tier};
use uuid::Uuid;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

/// The body of `POST /v1/jobs`: an OpenAI chat request plus Sluice's job fields.
#[derive(Debug, Deserialize)]
pub(crate) struct SubmitBody {
    #[serde(flatten)]
    pub(crate) request: ChatRequest,
    #[serde(default)]
    pub(crate) priority: Option<Tier>,
    #[serde(default)]
    reply_subject: Option<String>,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
    /// Model groups to fall back to for this job (LiteLLM's client-side fallbacks).
    #[serde(default)]
    fallbacks: Option<Vec<String>>,
    #[serde(default)]
    disable_fallbacks: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Submitted {
    pub(crate) id: Uuid,
    object: &'static str,
    status: JobStatus,
    model: String,
    priority: Tier,
    created_at: i64,
    links: Links,
    subjects: SubjectsView,
}

#[derive(Debug, Serialize)]
struct Links {
    #[serde(rename = "self")]
    this: String,
    events: String,
}

#[derive(Debug, Serialize)]
struct SubjectsView {
    events: String,
}

pub async fn submit(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let caller = state.caller(req.headers()).await?;
    let header_key = crate::guard::idempotency_header(req.headers())?;
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let body = parse_submit(&bytes)?;
    let idempotency_key = header_key.or(body.idempotency_key.clone());
    let (response, replayed) = accept(&state, &caller, body, idempotency_key).await?;
    let mut resp = if replayed {
        (StatusCode::OK, Json(response)).into_response()
    } else {
        (StatusCode::ACCEPTED, Json(response)).into_response()
    };
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    Ok(resp)
}

/// Validates a parsed submission for `caller` and enqueues it (see [`enqueue`]).
pub(crate) async fn accept(
    state: &AppState,
    caller: &Caller,
    body: SubmitBody,
    idempotency_key: Option<String>,
) -> Result<(Submitted, bool), ApiError> {
    validate(state, &body.request)?;
    for (i, g) in body.fallbacks.iter().flatten().enumerate() {
        if !state.config.has_group(g) {
            return Err(
                ApiError::not_found(format!("fallback model group {g:?} does not exist"))
                    .param(format!("fallbacks[{i}]"))
                    .code("model_not_found"),
            );
        }
    }
    if !caller.may_use_model(&body.request.model) {
        return Err(ApiError::forbidden(format!(
            "this API key may not use model group {:?}",
            body.request.model
        ))
        .param("model")
        .code("model_not_allowed"));
    }
    crate::guard::submission(
        &state.config,
        &crate::guard::Destinations {
            metadata: body.metadata.as_ref(),
            idempotency_key: idempotency_key.as_deref(),
            reply_subject: body.reply_subject.as_deref(),
            webhook_url: body.webhook_url.as_deref(),
        },
    )?;
    enqueue(state, caller, body, idempotency_key).await
}

/// Parses the body, naming the offending field on error.
pub(crate) fn parse_submit(bytes: &[u8]) -> Result<SubmitBody, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    match obj.get("model") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("missing required field `model`").param("model"))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::bad_request("`model` must not be empty").param("model"))
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(ApiError::bad_request("`model` must be a string").param("model")),
    }
    match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("missing required field `messages`").param("messages"))
        }
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(
                ApiError::bad_request("`messages` must contain at least one message")
                    .param("messages"),
            )
        }
        Some(Value::Array(_)) => {}
        Some(_) => {
            return Err(ApiError::bad_request("`messages` must be an array").param("messages"))
        }
    }
    match serde_json::from_value::<SubmitBody>(value.clone()) {
        Ok(body) => Ok(body),
        Err(e) => {
            Err(diagnose(obj)
                .unwrap_or_else(|| ApiError::bad_request(format!("invalid request: {e}"))))
        }
    }
}

/// Finds which field made the body invalid, with its path (`messages[0].role`).
/// Runs only on the error path; flattened structs hide paths from serde, so each known
/// field is checked on its own.
fn diagnose(obj: &Map<String, Value>) -> Option<ApiError> {
    use sluice_schemas::openai::{Message, Stop, StreamOptions, Tool};
    fn check<T: serde::de::DeserializeOwned>(
        obj: &Map<String, Value>,
        key: &str,
    ) -> Option<ApiError> {
        let v = obj.get(key)?.clone();
        if v.is_null() {
            return None;
        }
        let err = serde_path_to_error::deserialize::<_, T>(v).err()?;
        let path = err.path().to_string();
        let param = match path.as_str() {
            "." | "" => key.to_string(),
            p if p.starts_with('[') => format!("{key}{p}"),
            p => format!("{key}.{p}"),
        };
        Some(ApiError::bad_request(format!("invalid `{param}`: {}", err.into_inner())).param(param))
    }
    check::<Vec<Message>>(obj, "messages")
        .or_else(|| check::<Tier>(obj, "priority"))
        .or_else(|| check::<bool>(obj, "stream"))
        .or_else(|| check::<StreamOptions>(obj, "stream_options"))
        .or_else(|| check::<u32>(obj, "max_tokens"))
        .or_else(|| check::<u32>(obj, "max_completion_tokens"))
        .or_else(|| check::<f64>(obj, "temperature"))
        .or_else(|| check::<f64>(obj, "top_p"))
        .or_else(|| check::<u32>(obj, "n"))
        .or_else(|| check::<i64>(obj, "seed"))
        .or_else(|| check::<Stop>(obj, "stop"))
        .or_else(|| check::<Vec<Tool>>(obj, "tools"))
        .or_else(|| check::<bool>(obj, "parallel_tool_calls"))
        .or_else(|| check::<String>(obj, "reasoning_effort"))
        .or_else(|| check::<String>(obj, "user"))
        .or_else(|| check::<String>(obj, "reply_subject"))
        .or_else(|| check::<String>(obj, "webhook_url"))
        .or_else(|| check::<String>(obj, "idempotency_key"))
        .or_else(|| check::<Map<String, Value>>(obj, "metadata"))
        .or_else(|| check::<Vec<String>>(obj, "fallbacks"))
        .or_else(|| check::<bool>(obj, "disable_fallbacks"))
}

pub(crate) fn validate(state: &AppState, request: &ChatRequest) -> Result<(), ApiError> {
    if !state.config.has_group(&request.model) {
        let groups = state.config.groups();
        return Err(ApiError::not_found(format!(
            "model group {:?} does not exist; available: {}",
            request.model,
            if groups.is_empty() {
                "(none configured)".to_string()
            } else {
                groups.join(", ")
            }
        ))
        .param("model")
        .code("model_not_found"));
    }
    for (i, m) in request.messages.iter().enumerate() {
        let empty = match &m.content {
            None => m.tool_calls.is_none(),
            Some(Content::Text(_)) => false,
            Some(Content::Parts(p)) => p.is_empty(),
        };
        if empty {
            return Err(
                ApiError::bad_request(format!("messages[{i}] has no content"))
                    .param(format!("messages[{i}].content")),
            );
        }
    }
    for (name, v, lo, hi) in [
        ("temperature", request.temperature, 0.0, 2.0),
        ("top_p", request.top_p, 0.0, 1.0),
    ] {
        if let Some(v) = v {
            if !(lo..=hi).contains(&v) {
                return Err(ApiError::bad_request(format!(
                    "`{name}` must be between {lo} and {hi}"
                ))
                .param(name));
            }
        }
    }
    if request.n.is_some_and(|n| n == 0) {
        return Err(ApiError::bad_request("`n` must be at least 1").param("n"));
    }
    if request.max_tokens == Some(0) || request.max_completion_tokens == Some(0) {
        return Err(ApiError::bad_request("`max_tokens` must be at least 1").param("max_tokens"));
    }
    Ok(())
}

/// Records the job, publishes it, and answers; a repeated idempotency key answers with
/// the existing job instead.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    body: SubmitBody,
    idempotency_key: Option<String>,
) -> Result<(Submitted, bool), ApiError> {
    let id = Uuid::now_v7();
    let now = Utc::now();
    let tier = body.priority.unwrap_or_default();
    let model = body.request.model.clone();
    let recorded = state
        .jobs
        .write(NewJob {
            id,
            owner: caller.owner.clone(),
            idempotency_key,
            model_group: model.clone(),
            tier: tier.as_str().to_string(),
            reply_subject: body.reply_subject.clone(),
            metadata: body.metadata.clone().map(Value::Object),
            created_at: now,
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot record job");
            ApiError::unavailable("cannot record the job right now; retry shortly")
        })?;
    if let Recorded::Existing(existing) = recorded {
        let row = state
            .store
            .job(existing)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::internal("idempotent job vanished"))?;
        let tier = Tier::parse(&row.tier).unwrap_or_default();
        let status = JobStatus::parse(&row.status).unwrap_or(JobStatus::Queued);
        return Ok((
            submitted(
                state,
                existing,
                row.model_group,
                tier,
                status,
                row.created_at,
            ),
            true,
        ));
    }

    let envelope = JobEnvelope {
        id,
        request: body.request,
        tier,
        owner: Some(caller.owner.clone()),
        reply_subject: body.reply_subject,
        webhook_url: body.webhook_url,
        metadata: body.metadata,
        submitted_at_ms: now.timestamp_millis(),
        fallbacks: body.fallbacks,
        disable_fallbacks: body.disable_fallbacks.unwrap_or(false),
    };
    let payload = serde_json::to_vec(&envelope).map_err(|e| ApiError::internal(e.to_string()))?;
    let published = async {
        let (headers, payload) = crate::bodies::job_message(state, id, payload).await?;
        state
            .js
            .publish_with_headers(state.subjects.jobs(tier), headers, payload)
            .await?
            .await?;
        Ok::<(), async_nats::Error>(())
    }
    .await;
    if let Err(e) = published {
        tracing::error!(job_id = %id, error = %e, "enqueue failed");
        if let Err(e) = state.store.forget_job(id).await {
            tracing::error!(job_id = %id, error = %e, "cannot remove unqueued job");
        }
        return Err(ApiError::unavailable(
            "the job queue is unavailable; retry shortly",
        ));
    }
    crate::metrics::submitted(tier, &model);
    Ok((
        submitted(state, id, model, tier, JobStatus::Queued, now),
        false,
    ))
}

fn submitted(
    state: &AppState,
    id: Uuid,
    model: String,
    tier: Tier,
    status: JobStatus,
    created: DateTime<Utc>,
) -> Submitted {
    Submitted {
        id,
        object: "sluice.job",
        status,
        model,
        priority: tier,
        created_at: created.timestamp(),
        links: Links {
            this: format!("/v1/jobs/{id}"),
            events: format!("/v1/jobs/{id}/events"),
        },
        subjects: SubjectsView {
            events: state.subjects.events(id),
        },
    }
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
    status: String,
    model: String,
    priority: String,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    not_before: Option<i64>,
    queue_wait_ms: Option<i64>,
    run_ms: Option<i64>,
    attempts: i32,
    result: Option<Value>,
    usage: Option<Value>,
    /// USD across all attempts; null when a price is missing.
    #[serde(with = "rust_decimal::serde::float_option")]
    cost: Option<rust_decimal::Decimal>,
    pricing_missing: bool,
    error: Option<ErrorView>,
    metadata: Option<Value>,
    attempt_log: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
struct ErrorView {
    class: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct AttemptView {
    attempt: i32,
    deployment: String,
    provider: String,
    model: String,
    status: String,
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
        error: row.error_class.map(|class| ErrorView {
            class,
            message: row.error_message.unwrap_or_default(),
        }),
        metadata: row.metadata,
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
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.caller(&headers).await?;
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
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let caller = state.caller(&headers).await?;
    let id = parse_id(&raw)?;
    let row = load_job(&state, &caller, id).await?;
    let finished = JobStatus::parse(&row.status).is_some_and(JobStatus::is_terminal);

    let permit = state
        .streams
        .acquire(&caller.owner, state.config.safety.max_streams_per_key)?;
    let messages = follow_events(&state, id).await?;

    let out = crate::streams::bounded(
        event_stream(messages, finished, row, state.store.clone()),
        permit,
        state.config.safety.max_stream_bytes,
    );
    Ok(Sse::new(out).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Follows a job's events from the first one (an ordered consumer; dropped with it).
pub(crate) async fn follow_events(
    state: &AppState,
    id: Uuid,
) -> Result<consumer::push::Ordered, ApiError> {
    let stream = state
        .js
        .get_stream(state.subjects.events_stream())
        .await
        .map_err(|e| ApiError::unavailable(format!("event stream unavailable: {e}")))?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            filter_subject: state.subjects.events(id),
            deliver_policy: DeliverPolicy::All,
            deliver_subject: state.nats.new_inbox(),
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot follow job events: {e}")))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot follow job events: {e}")))?;

    Ok(messages)
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
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.caller(&headers).await?;
    let id = parse_id(&raw)?;
    let row = load_job(&state, &caller, id).await?;
    if JobStatus::parse(&row.status).is_some_and(JobStatus::is_terminal) {
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
