//! Job submission, shared by every way in: `POST /v1/jobs` (`routes/jobs.rs`), the
//! OpenAI-compatible `POST /v1/chat/completions` (`routes/chat.rs`) and the batch driver
//! (`batches.rs`). Parses and validates a submission (naming the offending field), records
//! the job row, publishes the envelope and answers with the job's links.
//!
//! Owns no HTTP: callers bring the body bytes and the authenticated [`Caller`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_core::store::{NewJob, Recorded};
use sluice_schemas::embeddings::EmbeddingsRequest;
use sluice_schemas::openai::{ChatRequest, Content};
use sluice_schemas::{JobEnvelope, JobStatus, Tier};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

/// The body of `POST /v1/jobs`: an OpenAI chat request (or, parsed as
/// `SubmitBody<EmbeddingsRequest>`, an embeddings request) plus Sluice's job fields.
#[derive(Debug, Deserialize)]
pub(crate) struct SubmitBody<R = ChatRequest> {
    #[serde(flatten)]
    pub(crate) request: R,
    #[serde(default)]
    pub(crate) priority: Option<Tier>,
    #[serde(default)]
    pub(crate) reply_subject: Option<String>,
    #[serde(default)]
    pub(crate) webhook_url: Option<String>,
    #[serde(default)]
    pub(crate) metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
    /// Model groups to fall back to for this job (LiteLLM's client-side fallbacks).
    #[serde(default)]
    pub(crate) fallbacks: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) disable_fallbacks: Option<bool>,
    /// An embeddings job's request; `request` then only names its model group.
    #[serde(skip)]
    pub(crate) embeddings: Option<Box<EmbeddingsRequest>>,
    /// The request's `User-Agent`, for `tag_regex` routing (`routes/chat.rs`, `RoutingHeaders`).
    #[serde(skip)]
    pub(crate) user_agent: Option<String>,
}

impl SubmitBody<EmbeddingsRequest> {
    /// The embeddings submission as a job: `request` names the group, `embeddings` holds
    /// the request.
    fn into_job(self) -> SubmitBody {
        SubmitBody {
            request: ChatRequest {
                model: self.request.model.clone(),
                ..ChatRequest::default()
            },
            priority: self.priority,
            reply_subject: self.reply_subject,
            webhook_url: self.webhook_url,
            metadata: self.metadata,
            idempotency_key: self.idempotency_key,
            fallbacks: self.fallbacks,
            disable_fallbacks: self.disable_fallbacks,
            embeddings: Some(Box::new(self.request)),
            user_agent: self.user_agent,
        }
    }
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
pub(crate) struct Links {
    #[serde(rename = "self")]
    this: String,
    events: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct SubjectsView {
    events: String,
}

/// Validates a parsed submission for `caller` and enqueues it (see [`enqueue`]).
pub(crate) async fn accept(
    state: &AppState,
    caller: &Caller,
    body: SubmitBody,
    idempotency_key: Option<String>,
) -> Result<(Submitted, bool), ApiError> {
    validate(state, &body.request)?;
    check_tags(
        body.metadata.as_ref().and_then(|m| m.get("tags")),
        "metadata.tags",
    )?;
    if let Some(e) = &body.embeddings {
        validate_embeddings(e)?;
    }
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
    let span = tracing::info_span!(target: sluice_core::telemetry::TARGET, "enqueue",
        otel.name = "send jobs", otel.kind = "producer", sluice.job_id = tracing::field::Empty);
    enqueue(state, caller, body, idempotency_key)
        .instrument(span)
        .await
}

/// Parses a `POST /v1/jobs` body: an embeddings job when it has `input` and no
/// `messages`, else a chat job.
pub(crate) fn parse_job(bytes: &[u8]) -> Result<SubmitBody, ApiError> {
    if let Some(body) = parse_chat_fast(bytes) {
        return Ok(body);
    }
    let value = parse_object(bytes)?;
    let embeddings = value.get("input").is_some() && value.get("messages").is_none();
    if embeddings {
        embeddings_body(value)
    } else {
        chat_body(value)
    }
}

/// Parses an embeddings body (`POST /v1/embeddings`, batch lines), naming the offending
/// field on error.
pub(crate) fn parse_embeddings(bytes: &[u8]) -> Result<SubmitBody, ApiError> {
    embeddings_body(parse_object(bytes)?)
}

fn parse_object(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    check_model(&value)?;
    Ok(value)
}

fn check_model(value: &Value) -> Result<(), ApiError> {
    match value.get("model") {
        None | Some(Value::Null) => {
            Err(ApiError::bad_request("missing required field `model`").param("model"))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(ApiError::bad_request("`model` must not be empty").param("model"))
        }
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::bad_request("`model` must be a string").param("model")),
    }
}

fn embeddings_body(value: Value) -> Result<SubmitBody, ApiError> {
    use sluice_schemas::embeddings::{EmbeddingInput, EncodingFormat};
    let Value::Object(obj) = &value else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    if obj.get("input").is_none_or(Value::is_null) {
        return Err(ApiError::bad_request("missing required field `input`").param("input"));
    }
    match serde_json::from_value::<SubmitBody<EmbeddingsRequest>>(value.clone()) {
        Ok(body) => Ok(body.into_job()),
        Err(e) => Err(diagnose_with(obj, |obj| {
            check::<EmbeddingInput>(obj, "input")
                .or_else(|| check::<u32>(obj, "dimensions"))
                .or_else(|| check::<EncodingFormat>(obj, "encoding_format"))
                .or_else(|| check::<String>(obj, "user"))
        })
        .unwrap_or_else(|| ApiError::bad_request(format!("invalid request: {e}")))),
    }
}

/// Checks what only an embeddings request can get wrong (the group is checked like a
/// chat job's).
pub(crate) fn validate_embeddings(e: &EmbeddingsRequest) -> Result<(), ApiError> {
    if let Some(message) = e.input.invalid() {
        return Err(ApiError::bad_request(message).param("input"));
    }
    if e.dimensions == Some(0) {
        return Err(ApiError::bad_request("`dimensions` must be at least 1").param("dimensions"));
    }
    // Tag routing reads an embeddings job's `tags` as a chat job's (`worker/src/job/eligible.rs`).
    check_tags(e.extra.get("tags"), "tags")
}

/// Parses a chat body, naming the offending field on error.
pub(crate) fn parse_submit(bytes: &[u8]) -> Result<SubmitBody, ApiError> {
    if let Some(body) = parse_chat_fast(bytes) {
        return Ok(body);
    }
    chat_body(parse_object(bytes)?)
}

/// A valid chat body parses in one pass; only one that fails (or lacks a model or
/// messages) takes the slower walk that names the offending field.
///
/// One pass over the bytes: the job's own fields arrive in the request's `extra` and are
/// taken out of it there (`SubmitBody`'s flattened request would have serde buffer the
/// whole body first, prompts and all).
fn parse_chat_fast(bytes: &[u8]) -> Option<SubmitBody> {
    let mut request = serde_json::from_slice::<ChatRequest>(bytes).ok()?;
    if request.model.trim().is_empty() || request.messages.is_empty() {
        return None;
    }
    let extra = &mut request.extra;
    let priority = take(extra, "priority")?;
    let reply_subject = take(extra, "reply_subject")?;
    let webhook_url = take(extra, "webhook_url")?;
    let metadata = take(extra, "metadata")?;
    let idempotency_key = take(extra, "idempotency_key")?;
    let fallbacks = take(extra, "fallbacks")?;
    let disable_fallbacks = take(extra, "disable_fallbacks")?;
    Some(SubmitBody {
        request,
        priority,
        reply_subject,
        webhook_url,
        metadata,
        idempotency_key,
        fallbacks,
        disable_fallbacks,
        embeddings: None,
        user_agent: None,
    })
}

/// Field `key` of a submission, taken out of the request's `extra`: `Some(None)` when it
/// is absent or null, `None` when it does not read as a `T`.
fn take<T: serde::de::DeserializeOwned>(
    extra: &mut Map<String, Value>,
    key: &str,
) -> Option<Option<T>> {
    match extra.remove(key) {
        None => Some(None),
        Some(value) => serde_json::from_value::<Option<T>>(value).ok(),
    }
}

fn chat_body(value: Value) -> Result<SubmitBody, ApiError> {
    let Value::Object(obj) = &value else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
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
    match SubmitBody::deserialize(&value) {
        Ok(body) => Ok(body),
        Err(e) => {
            Err(diagnose(obj)
                .unwrap_or_else(|| ApiError::bad_request(format!("invalid request: {e}"))))
        }
    }
}

/// The error of field `key` of `obj` read as a `T`, with its path (`messages[0].role`).
fn check<T: serde::de::DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Option<ApiError> {
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

/// Finds which field made the body invalid, with its path (`messages[0].role`).
/// Runs only on the error path; flattened structs hide paths from serde, so each known
/// field is checked on its own.
fn diagnose(obj: &Map<String, Value>) -> Option<ApiError> {
    use sluice_schemas::openai::{Message, Stop, StreamOptions, Tool};
    diagnose_with(obj, |obj| {
        check::<Vec<Message>>(obj, "messages")
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
    })
}

/// The request's own fields (`request`), then the job fields every kind shares.
fn diagnose_with(
    obj: &Map<String, Value>,
    request: impl Fn(&Map<String, Value>) -> Option<ApiError>,
) -> Option<ApiError> {
    request(obj)
        .or_else(|| check::<Tier>(obj, "priority"))
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
    check_tags(request.extra.get("tags"), "tags")?;
    if request.n.is_some_and(|n| n == 0) {
        return Err(ApiError::bad_request("`n` must be at least 1").param("n"));
    }
    if request.max_tokens == Some(0) || request.max_completion_tokens == Some(0) {
        return Err(ApiError::bad_request("`max_tokens` must be at least 1").param("max_tokens"));
    }
    Ok(())
}

/// Tags for tag routing (`tags`, `metadata.tags`) are a list of strings.
fn check_tags(tags: Option<&Value>, param: &str) -> Result<(), ApiError> {
    match tags {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(()),
        Some(_) => {
            Err(ApiError::bad_request(format!("`{param}` must be a list of strings")).param(param))
        }
    }
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
    tracing::Span::current().record("sluice.job_id", tracing::field::display(id));
    let now = Utc::now();
    let tier = body.priority.unwrap_or_default();
    let model = body.request.model.clone();
    let envelope = JobEnvelope {
        id,
        request: body.request,
        embeddings: body.embeddings,
        tier,
        owner: Some(caller.owner.clone()),
        reply_subject: body.reply_subject.clone(),
        webhook_url: body.webhook_url,
        metadata: body.metadata.clone(),
        submitted_at_ms: now.timestamp_millis(),
        fallbacks: body.fallbacks,
        disable_fallbacks: body.disable_fallbacks.unwrap_or(false),
        user_agent: body.user_agent,
    };
    let payload =
        serde_json::to_string(&envelope).map_err(|e| ApiError::internal(e.to_string()))?;
    let subject = state.subjects.jobs(tier);
    // The row and its envelope (the outbox) are durable before the publish: whatever
    // happens after, the job runs (see api/src/outbox.rs).
    let recorded = state
        .jobs
        .write(NewJob {
            id,
            owner: caller.owner.clone(),
            idempotency_key,
            model_group: model.clone(),
            tier,
            reply_subject: body.reply_subject,
            metadata: body.metadata.map(Value::Object),
            created_at: now,
            subject: Some(subject.clone()),
            payload: Some(payload.clone()),
            request_id: crate::access::request_id(),
            // The "send jobs" span: a republish from the outbox continues it.
            traceparent: sluice_core::telemetry::current_traceparent(),
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
        let (tier, status) = (row.tier, row.status);
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
    crate::outbox::fault_point("after_record");

    let published = async {
        // Larger than a message may be: by reference (see `sluice_core::bodies`).
        let (headers, payload) =
            crate::bodies::job_message(state, id, payload.into_bytes()).await?;
        // A short wait for a stream that is electing a leader (a NATS node lost); past it
        // the outbox publishes the job.
        let ack = sluice_core::nats::publish_acked(
            &state.js,
            subject,
            headers,
            payload,
            sluice_core::nats::PUBLISH_PATIENCE,
        )
        .await?;
        Ok::<u64, async_nats::Error>(ack.sequence)
    }
    .await;
    match published {
        Ok(seq) => {
            state.outbox.push(id, seq);
        }
        Err(e) => {
            // The message may or may not be in the stream; the outbox entry stays, and a
            // reconciler publishes it under the same Nats-Msg-Id (deduplicated if it is).
            tracing::warn!(job_id = %id, error = %e, "publish not acknowledged; the outbox will publish the job");
        }
    }
    crate::metrics::submitted(tier, &model, &caller.owner);
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
    // Joined rather than `format!`ted: a `Uuid` is `Display`ed a piece at a time.
    let mut text = Uuid::encode_buffer();
    let this = ["/v1/jobs/", id.hyphenated().encode_lower(&mut text)].concat();
    Submitted {
        id,
        object: "sluice.job",
        status,
        model,
        priority: tier,
        created_at: created.timestamp(),
        links: Links {
            events: [this.as_str(), "/events"].concat(),
            this,
        },
        subjects: SubjectsView {
            events: state.subjects.events(id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass read of a chat submission gives what the field-naming walk gives.
    #[test]
    fn a_chat_submission_reads_the_same_in_one_pass_as_through_a_value() {
        let body = br#"{"model":"g","messages":[{"role":"user","content":"hi"}],
            "priority":"high","reply_subject":"r.s","webhook_url":"https://h/x",
            "metadata":{"tags":["a"]},"idempotency_key":"k","fallbacks":["f"],
            "disable_fallbacks":false,"max_tokens":8,"logit_bias":{"1":2}}"#;
        let fast = parse_chat_fast(body).unwrap();
        let slow = chat_body(parse_object(body).unwrap()).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        assert_eq!(fast.priority, Some(Tier::High));
        assert_eq!(
            fast.request.extra.len(),
            1,
            "only the request's own extras stay"
        );
        // Nulls are absent; a job field of the wrong type takes the naming walk.
        let nulls = br#"{"model":"g","messages":[{"role":"user","content":"hi"}],"priority":null}"#;
        assert_eq!(parse_chat_fast(nulls).unwrap().priority, None);
        let bad = br#"{"model":"g","messages":[{"role":"user","content":"hi"}],"priority":"soon"}"#;
        assert!(parse_chat_fast(bad).is_none());
        assert!(parse_submit(bad).is_err());
    }
}
