//! The providers' batch APIs as the simulator speaks them, on their real paths:
//!
//! | API | paths |
//! |---|---|
//! | OpenAI | `POST /v1/files` (multipart), `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel` |
//! | Azure | the same under `/openai/v1`, `api-key` header |
//! | Anthropic | `POST /v1/messages/batches`, `GET /v1/messages/batches` (list), `GET …/{id}`, `GET …/{id}/results`, `POST …/{id}/cancel` |
//! | Gemini | `POST /v1beta/models/{m}:batchGenerateContent`, `GET /v1beta/batches` (list), `GET /v1beta/batches/{id}`, `POST /v1beta/batches/{id}:cancel` |
//!
//! A batch completes [`SimConfig::batch_delay_ms`](super::SimConfig) after it was created;
//! each line's answer is what the live endpoint answers for the same body (the live
//! handlers render it), so answers and usage match live calls. Faults
//! ([`BatchFault`], on the first `batch_fault_first` batches): `failed` (the whole batch
//! fails: OpenAI/Azure `failed` with `token_limit_exceeded`, Gemini `BATCH_STATE_FAILED`,
//! Anthropic refuses the create with 400), `expire` (the batch expires with no results),
//! `slow` (it never finishes until cancelled); `batch_create_delay_ms` answers create calls
//! late, after the batch exists. A line whose text contains
//! `sim-line-error` fails on its own (a 400 in the protocol's terms).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{header_str, json_error, now, Sim};

/// A whole-batch fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchFault {
    Failed,
    Expire,
    Slow,
}

/// The marker that makes one line fail.
pub const LINE_ERROR: &str = "sim-line-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    Completed,
    Failed,
    Expired,
    Cancelled,
}

struct Job {
    kind: Kind,
    /// Gemini: the model the batch was created for.
    model: String,
    /// (custom_id, request body) per line.
    lines: Vec<(String, Value)>,
    metadata: Value,
    input_file_id: Option<String>,
    created: i64,
    /// Prompt tokens the batch puts in the queue (OpenAI, Azure).
    tokens: u64,
    ready_at: Instant,
    fault: Option<BatchFault>,
    phase: Phase,
    /// (custom_id, HTTP status, answer body) once completed.
    results: Vec<(String, u16, Value)>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

/// Files and batches held by one simulator.
#[derive(Default)]
pub(super) struct Batches {
    files: HashMap<String, Vec<u8>>,
    jobs: HashMap<String, Job>,
    next: u64,
}

impl Batches {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:06}", self.next)
    }
}

fn openai_key_ok(sim: &Sim, kind: Kind, headers: &HeaderMap) -> bool {
    match kind {
        Kind::Azure => sim.key_ok(header_str(headers, "api-key")),
        _ => {
            sim.key_ok(header_str(headers, "authorization").and_then(|v| v.strip_prefix("Bearer ")))
        }
    }
}

fn unauthorized() -> Response {
    json_error(
        401,
        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        &[],
    )
}

fn not_found(what: &str) -> Response {
    json_error(
        404,
        json!({"error": {"message": format!("No such {what}"), "type": "invalid_request_error"}}),
        &[],
    )
}

/// The fault for the next batch created.
fn next_fault(sim: &Sim) -> Option<BatchFault> {
    let n = sim.stats.batch_creates.fetch_add(1, Ordering::SeqCst);
    (n < sim.config.batch_fault_first)
        .then_some(sim.config.batch_fault)
        .flatten()
}

/// [`SimConfig::batch_create_delay_ms`](super::SimConfig): the batch exists upstream, its
/// create call's answer comes late (a caller that dies meanwhile never learns its id).
async fn answer_late(sim: &Sim) {
    if sim.config.batch_create_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.batch_create_delay_ms)).await;
    }
}

fn ready_at(sim: &Sim) -> Instant {
    Instant::now() + Duration::from_millis(sim.config.batch_delay_ms)
}

// ---- OpenAI and Azure -------------------------------------------------------------

/// `POST /v1/files` (multipart: `purpose`, `file`).
pub(super) async fn upload(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    upload_any(&sim, Kind::OpenAi, &headers, &body)
}

pub(super) async fn azure_upload(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    upload_any(&sim, Kind::Azure, &headers, &body)
}

fn upload_any(sim: &Sim, kind: Kind, headers: &HeaderMap, body: &[u8]) -> Response {
    if !openai_key_ok(sim, kind, headers) {
        return unauthorized();
    }
    let Some(boundary) = header_str(headers, "content-type")
        .and_then(|c| c.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return json_error(
            400,
            json!({"error": {"message": "expected multipart/form-data"}}),
            &[],
        );
    };
    let parts = multipart(body, &boundary);
    let purpose = parts
        .iter()
        .find(|(n, _)| n == "purpose")
        .map(|(_, v)| String::from_utf8_lossy(v).to_string());
    let Some((_, file)) = parts.into_iter().find(|(n, _)| n == "file") else {
        return json_error(
            400,
            json!({"error": {"message": "missing file", "param": "file"}}),
            &[],
        );
    };
    if purpose.as_deref() != Some("batch") {
        return json_error(
            400,
            json!({"error": {"message": "purpose must be batch", "param": "purpose"}}),
            &[],
        );
    }
    let Ok(mut b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let id = b.id("file-sim");
    let bytes = file.len();
    b.files.insert(id.clone(), file);
    Json(json!({"id": id, "object": "file", "bytes": bytes, "created_at": now(), "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})).into_response()
}

/// The named parts of a multipart body: (name, content).
fn multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delim.as_bytes()) {
        rest = &rest[at + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content = &rest[head_end + 4..];
        let end = find(content, format!("\r\n{delim}").as_bytes()).unwrap_or(content.len());
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_string();
        out.push((name, content[..end].to_vec()));
        rest = &content[end..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) async fn file_content(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match b.files.get(&id) {
        Some(bytes) => (
            [(
                "content-type",
                HeaderValue::from_static("application/jsonl"),
            )],
            bytes.clone(),
        )
            .into_response(),
        None => not_found("file"),
    }
}

pub(super) async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let answer = create_any(&sim, Kind::OpenAi, &headers, &body);
    answer_late(&sim).await;
    answer
}

pub(super) async fn azure_create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let answer = create_any(&sim, Kind::Azure, &headers, &body);
    answer_late(&sim).await;
    answer
}

fn create_any(sim: &Sim, kind: Kind, headers: &HeaderMap, body: &Value) -> Response {
    if !openai_key_ok(sim, kind, headers) {
        return unauthorized();
    }
    if body["completion_window"].as_str() != Some("24h") {
        return json_error(
            400,
            json!({"error": {"message": "completion_window must be 24h", "param": "completion_window"}}),
            &[],
        );
    }
    let Some(file_id) = body["input_file_id"].as_str() else {
        return json_error(
            400,
            json!({"error": {"message": "missing input_file_id", "param": "input_file_id"}}),
            &[],
        );
    };
    let fault = next_fault(sim);
    let Ok(mut b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(file) = b.files.get(file_id) else {
        return not_found("file");
    };
    let mut lines = Vec::new();
    for l in file.split(|c| *c == b'\n') {
        if l.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(l) else {
            return json_error(
                400,
                json!({"error": {"message": "input line is not JSON"}}),
                &[],
            );
        };
        let (Some(id), Some(body)) = (v["custom_id"].as_str(), v.get("body")) else {
            return json_error(
                400,
                json!({"error": {"message": "input line needs custom_id and body"}}),
                &[],
            );
        };
        lines.push((id.to_string(), body.clone()));
    }
    // The enqueued-token limit: a batch that would take the model's queue past it fails
    // with `token_limit_exceeded`, as OpenAI and Azure fail it.
    let tokens: u64 = lines.iter().map(|(_, body)| prompt_tokens(body)).sum();
    let mut fault = fault;
    if let Some(limit) = sim.config.batch_enqueued_tokens {
        let enqueued: u64 = b
            .jobs
            .values()
            .filter(|j| j.kind == kind && j.phase == Phase::Running)
            .map(|j| j.tokens)
            .sum();
        if enqueued + tokens > limit {
            sim.stats.batch_over_limit.fetch_add(1, Ordering::SeqCst);
            fault = Some(BatchFault::Failed);
        }
    }
    let id = b.id("batch_sim");
    let job = Job {
        kind,
        model: String::new(),
        lines,
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
        input_file_id: Some(file_id.to_string()),
        created: now(),
        tokens,
        ready_at: ready_at(sim),
        fault,
        phase: Phase::Running,
        results: Vec::new(),
        output_file_id: None,
        error_file_id: None,
    };
    let view = openai_view(&id, &job);
    b.jobs.insert(id, job);
    Json(view).into_response()
}

/// Prompt tokens of an OpenAI chat body, counted as the live endpoint counts usage.
fn prompt_tokens(body: &Value) -> u64 {
    let messages = body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let chars: usize = messages
        .iter()
        .map(|m| super::plan::text_chars(&m["content"]))
        .sum();
    (chars as u64).div_ceil(4) + 4 * messages.len() as u64
}

fn openai_view(id: &str, j: &Job) -> Value {
    let status = match j.phase {
        Phase::Running => "in_progress",
        Phase::Completed => "completed",
        Phase::Failed => "failed",
        Phase::Expired => "expired",
        Phase::Cancelled => "cancelled",
    };
    let failed = j.results.iter().filter(|r| r.1 != 200).count();
    let errors = (j.phase == Phase::Failed).then(|| json!({"object": "list", "data": [
        {"code": "token_limit_exceeded", "message": "Enqueued token limit reached for this model.", "param": null, "line": null}]}));
    json!({
        "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": errors,
        "input_file_id": j.input_file_id, "completion_window": "24h", "status": status,
        "output_file_id": j.output_file_id, "error_file_id": j.error_file_id,
        "created_at": j.created, "expires_at": j.created + 86_400,
        "request_counts": {"total": j.lines.len(), "completed": j.results.len() - failed, "failed": failed},
        "metadata": j.metadata,
    })
}

pub(super) async fn get_batch(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_any(sim, Kind::OpenAi, id, headers).await
}

pub(super) async fn azure_get_batch(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_any(sim, Kind::Azure, id, headers).await
}

async fn get_any(sim: Arc<Sim>, kind: Kind, id: String, headers: HeaderMap) -> Response {
    if !openai_key_ok(&sim, kind, &headers) {
        return unauthorized();
    }
    advance(&sim, &id).await;
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match b.jobs.get(&id) {
        Some(j) if j.kind == kind => Json(openai_view(&id, j)).into_response(),
        _ => not_found("batch"),
    }
}

pub(super) async fn list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    list_any(&sim, Kind::OpenAi, &headers)
}

pub(super) async fn azure_list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    list_any(&sim, Kind::Azure, &headers)
}

fn list_any(sim: &Sim, kind: Kind, headers: &HeaderMap) -> Response {
    if !openai_key_ok(sim, kind, headers) {
        return unauthorized();
    }
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut data: Vec<(&String, &Job)> = b.jobs.iter().filter(|(_, j)| j.kind == kind).collect();
    data.sort_by(|a, b| b.0.cmp(a.0));
    let data: Vec<Value> = data.into_iter().map(|(id, j)| openai_view(id, j)).collect();
    Json(json!({"object": "list", "data": data, "has_more": false})).into_response()
}

pub(super) async fn cancel(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    cancel_any(&sim, Kind::OpenAi, &id, &headers)
}

pub(super) async fn azure_cancel(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    cancel_any(&sim, Kind::Azure, &id, &headers)
}

fn cancel_any(sim: &Sim, kind: Kind, id: &str, headers: &HeaderMap) -> Response {
    if !openai_key_ok(sim, kind, headers) {
        return unauthorized();
    }
    match mark_cancelled(sim, id) {
        Some(view) => Json(view).into_response(),
        None => not_found("batch"),
    }
}

/// Cancels a running batch; returns its view in its protocol's shape.
fn mark_cancelled(sim: &Sim, id: &str) -> Option<Value> {
    let mut b = sim.batches.lock().ok()?;
    let j = b.jobs.get_mut(id)?;
    if j.phase == Phase::Running {
        j.phase = Phase::Cancelled;
        sim.stats.batch_cancels.fetch_add(1, Ordering::SeqCst);
    }
    Some(match j.kind {
        Kind::OpenAi | Kind::Azure => openai_view(id, j),
        Kind::Anthropic => anthropic_view(id, j),
        Kind::Gemini => gemini_view(id, j),
    })
}

// ---- running a batch --------------------------------------------------------------

/// Moves a batch whose time has come to its end, rendering its lines.
async fn advance(sim: &Arc<Sim>, id: &str) {
    let (kind, model, lines, fault) = {
        let Ok(b) = sim.batches.lock() else { return };
        let Some(j) = b.jobs.get(id) else { return };
        if j.phase != Phase::Running
            || Instant::now() < j.ready_at
            || j.fault == Some(BatchFault::Slow)
        {
            return;
        }
        (j.kind, j.model.clone(), j.lines.clone(), j.fault)
    };
    let mut results = Vec::new();
    let phase = match fault {
        Some(BatchFault::Failed) => Phase::Failed,
        Some(BatchFault::Expire) => Phase::Expired,
        _ => {
            for (custom_id, body) in &lines {
                let (status, answer) = render(sim, kind, &model, body).await;
                results.push((custom_id.clone(), status, answer));
            }
            sim.stats
                .batch_lines
                .fetch_add(lines.len() as u64, Ordering::SeqCst);
            Phase::Completed
        }
    };
    let Ok(mut b) = sim.batches.lock() else {
        return;
    };
    let (out, err) = if matches!(kind, Kind::OpenAi | Kind::Azure) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for (custom_id, status, answer) in &results {
            let line = json!({"id": format!("batch_req_{custom_id}"), "custom_id": custom_id,
                "response": {"status_code": status, "request_id": "req_sim", "body": answer}, "error": null});
            let target = if *status == 200 { &mut out } else { &mut err };
            target.extend_from_slice(line.to_string().as_bytes());
            target.push(b'\n');
        }
        if phase == Phase::Expired {
            for (custom_id, _) in &lines {
                let line = json!({"id": format!("batch_req_{custom_id}"), "custom_id": custom_id, "response": null,
                    "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}});
                err.extend_from_slice(line.to_string().as_bytes());
                err.push(b'\n');
            }
        }
        let mut keep = |bytes: Vec<u8>| {
            (!bytes.is_empty()).then(|| {
                let id = b.id("file-sim-out");
                b.files.insert(id.clone(), bytes);
                id
            })
        };
        (keep(out), keep(err))
    } else {
        (None, None)
    };
    let Some(j) = b.jobs.get_mut(id) else { return };
    if j.phase != Phase::Running {
        return;
    }
    j.phase = phase;
    j.results = results;
    j.output_file_id = out;
    j.error_file_id = err;
}

/// One line's answer from the live endpoint of its protocol: (HTTP status, JSON body).
async fn render(sim: &Arc<Sim>, kind: Kind, model: &str, body: &Value) -> (u16, Value) {
    let mut headers = HeaderMap::new();
    let key = sim.config.api_key.clone().unwrap_or_default();
    let line_error = body.to_string().contains(LINE_ERROR);
    let bytes = Bytes::from(body.to_string());
    let response = match kind {
        Kind::OpenAi | Kind::Azure => {
            if line_error {
                return (
                    400,
                    json!({"error": {"message": "Invalid 'messages': rejected by the simulator.", "type": "invalid_request_error", "param": "messages", "code": null}}),
                );
            }
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
                headers.insert("authorization", v);
            }
            super::openai::chat(State(Arc::clone(sim)), headers, bytes).await
        }
        Kind::Anthropic => {
            if line_error {
                return (
                    400,
                    json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: rejected by the simulator"}}),
                );
            }
            if let Ok(v) = HeaderValue::from_str(&key) {
                headers.insert("x-api-key", v);
            }
            headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
            super::anthropic::messages(State(Arc::clone(sim)), headers, bytes).await
        }
        Kind::Gemini => {
            if line_error {
                return (
                    400,
                    json!({"code": 400, "message": "contents: rejected by the simulator", "status": "INVALID_ARGUMENT"}),
                );
            }
            if let Ok(v) = HeaderValue::from_str(&key) {
                headers.insert("x-goog-api-key", v);
            }
            super::gemini::generate(
                State(Arc::clone(sim)),
                Path(format!("{model}:generateContent")),
                Query(HashMap::new()),
                headers,
                bytes,
            )
            .await
        }
    };
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

// ---- Anthropic ------------------------------------------------------------------------

fn anthropic_key_ok(sim: &Sim, headers: &HeaderMap) -> bool {
    sim.key_ok(header_str(headers, "x-api-key"))
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    json_error(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
        &[],
    )
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn anthropic_view(id: &str, j: &Job) -> Value {
    let ended = j.phase != Phase::Running;
    let count = |pred: &dyn Fn(u16) -> bool| j.results.iter().filter(|r| pred(r.1)).count();
    let n = j.lines.len();
    let (succeeded, errored) = (count(&|s| s == 200), count(&|s| s != 200));
    let (canceled, expired) = match j.phase {
        Phase::Cancelled => (n, 0),
        Phase::Expired => (0, n),
        _ => (0, 0),
    };
    json!({
        "id": id, "type": "message_batch",
        "processing_status": if ended { "ended" } else { "in_progress" },
        "request_counts": {"processing": if ended { 0 } else { n }, "succeeded": succeeded,
            "errored": errored, "canceled": canceled, "expired": expired},
        "created_at": rfc3339(j.created), "expires_at": rfc3339(j.created + 86_400),
        "ended_at": if ended { Value::String(rfc3339(now())) } else { Value::Null },
        "cancel_initiated_at": if j.phase == Phase::Cancelled { Value::String(rfc3339(now())) } else { Value::Null },
        "archived_at": null,
        "results_url": if ended { Value::String(format!("/v1/messages/batches/{id}/results")) } else { Value::Null },
    })
}

pub(super) async fn anthropic_create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !anthropic_key_ok(&sim, &headers) {
        return anthropic_error(401, "authentication_error", "invalid x-api-key");
    }
    let Some(requests) = body["requests"].as_array() else {
        return anthropic_error(400, "invalid_request_error", "requests: Field required");
    };
    let mut lines = Vec::new();
    for r in requests {
        let (Some(id), Some(params)) = (r["custom_id"].as_str(), r.get("params")) else {
            return anthropic_error(
                400,
                "invalid_request_error",
                "each request needs custom_id and params",
            );
        };
        lines.push((id.to_string(), params.clone()));
    }
    let fault = next_fault(&sim);
    if fault == Some(BatchFault::Failed) {
        return anthropic_error(
            400,
            "invalid_request_error",
            "the simulator refuses this batch",
        );
    }
    let view = {
        let Ok(mut b) = sim.batches.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let id = b.id("msgbatch_sim");
        let job = Job {
            kind: Kind::Anthropic,
            model: String::new(),
            lines,
            metadata: Value::Null,
            input_file_id: None,
            created: now(),
            tokens: 0,
            ready_at: ready_at(&sim),
            fault,
            phase: Phase::Running,
            results: Vec::new(),
            output_file_id: None,
            error_file_id: None,
        };
        let view = anthropic_view(&id, &job);
        b.jobs.insert(id, job);
        view
    };
    answer_late(&sim).await;
    Json(view).into_response()
}

/// `GET /v1/messages/batches`: newest first.
pub(super) async fn anthropic_list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    if !anthropic_key_ok(&sim, &headers) {
        return anthropic_error(401, "authentication_error", "invalid x-api-key");
    }
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut data: Vec<(&String, &Job)> = b
        .jobs
        .iter()
        .filter(|(_, j)| j.kind == Kind::Anthropic)
        .collect();
    data.sort_by(|a, b| b.0.cmp(a.0));
    let data: Vec<Value> = data
        .into_iter()
        .map(|(id, j)| anthropic_view(id, j))
        .collect();
    let first = data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
        .into_response()
}

pub(super) async fn anthropic_get(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !anthropic_key_ok(&sim, &headers) {
        return anthropic_error(401, "authentication_error", "invalid x-api-key");
    }
    advance(&sim, &id).await;
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match b.jobs.get(&id) {
        Some(j) if j.kind == Kind::Anthropic => Json(anthropic_view(&id, j)).into_response(),
        _ => anthropic_error(404, "not_found_error", "batch not found"),
    }
}

pub(super) async fn anthropic_results(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !anthropic_key_ok(&sim, &headers) {
        return anthropic_error(401, "authentication_error", "invalid x-api-key");
    }
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(j) = b.jobs.get(&id).filter(|j| j.kind == Kind::Anthropic) else {
        return anthropic_error(404, "not_found_error", "batch not found");
    };
    if j.phase == Phase::Running {
        return anthropic_error(400, "invalid_request_error", "batch is still processing");
    }
    let mut out = String::new();
    let done: HashMap<&str, (u16, &Value)> = j
        .results
        .iter()
        .map(|(c, s, v)| (c.as_str(), (*s, v)))
        .collect();
    for (custom_id, _) in &j.lines {
        let result = match (done.get(custom_id.as_str()), &j.phase) {
            (Some((200, m)), _) => json!({"type": "succeeded", "message": m}),
            (Some((_, e)), _) => json!({"type": "errored", "error": e}),
            (None, Phase::Cancelled) => json!({"type": "canceled"}),
            (None, _) => json!({"type": "expired"}),
        };
        out.push_str(&json!({"custom_id": custom_id, "result": result}).to_string());
        out.push('\n');
    }
    (
        [(
            "content-type",
            HeaderValue::from_static("application/x-jsonl"),
        )],
        out,
    )
        .into_response()
}

pub(super) async fn anthropic_cancel(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !anthropic_key_ok(&sim, &headers) {
        return anthropic_error(401, "authentication_error", "invalid x-api-key");
    }
    match mark_cancelled(&sim, &id) {
        Some(v) => Json(v).into_response(),
        None => anthropic_error(404, "not_found_error", "batch not found"),
    }
}

// ---- Gemini ---------------------------------------------------------------------------

fn gemini_error(code: u16, status: &str, message: &str) -> Response {
    json_error(
        code,
        json!({"error": {"code": code, "message": message, "status": status}}),
        &[],
    )
}

fn gemini_view(id: &str, j: &Job) -> Value {
    let state = match j.phase {
        Phase::Running => "BATCH_STATE_RUNNING",
        Phase::Completed => "BATCH_STATE_SUCCEEDED",
        Phase::Failed => "BATCH_STATE_FAILED",
        Phase::Expired => "BATCH_STATE_EXPIRED",
        Phase::Cancelled => "BATCH_STATE_CANCELLED",
    };
    let done = j.phase != Phase::Running;
    let ok = j.results.iter().filter(|r| r.1 == 200).count();
    let mut op = json!({
        "name": id, "done": done,
        "metadata": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": format!("models/{}", j.model), "displayName": j.metadata, "state": state,
            "createTime": rfc3339(j.created),
            "batchStats": {"requestCount": j.lines.len().to_string(), "successfulRequestCount": ok.to_string(),
                "failedRequestCount": (j.results.len() - ok).to_string(),
                "pendingRequestCount": if done { "0".to_string() } else { j.lines.len().to_string() }}},
    });
    if j.phase == Phase::Failed {
        op["error"] =
            json!({"code": 8, "message": "Resource exhausted: the batch quota was reached."});
    }
    if j.phase == Phase::Completed {
        let inlined: Vec<Value> = j
            .results
            .iter()
            .map(|(key, status, v)| {
                if *status == 200 {
                    json!({"response": v, "metadata": {"key": key}})
                } else {
                    json!({"error": v.get("error").cloned().unwrap_or_else(|| v.clone()), "metadata": {"key": key}})
                }
            })
            .collect();
        op["response"] = json!({"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
            "inlinedResponses": {"inlinedResponses": inlined}});
    }
    op
}

/// `POST /v1beta/models/{model}:batchGenerateContent`.
pub(super) async fn gemini_create(
    sim: Arc<Sim>,
    model: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if !sim.key_ok(header_str(headers, "x-goog-api-key")) {
        return gemini_error(401, "UNAUTHENTICATED", "API key not valid.");
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return gemini_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let batch = &body["batch"];
    let Some(requests) = batch["input_config"]["requests"]["requests"].as_array() else {
        return gemini_error(
            400,
            "INVALID_ARGUMENT",
            "batch.input_config.requests is required",
        );
    };
    let mut lines = Vec::new();
    for r in requests {
        let (Some(key), Some(req)) = (r["metadata"]["key"].as_str(), r.get("request")) else {
            return gemini_error(
                400,
                "INVALID_ARGUMENT",
                "each request needs request and metadata.key",
            );
        };
        lines.push((key.to_string(), req.clone()));
    }
    let fault = next_fault(&sim);
    let view = {
        let Ok(mut b) = sim.batches.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let id = b.id("batches/sim");
        let job = Job {
            kind: Kind::Gemini,
            model: model.to_string(),
            lines,
            metadata: batch.get("display_name").cloned().unwrap_or(Value::Null),
            input_file_id: None,
            created: now(),
            tokens: 0,
            ready_at: ready_at(&sim),
            fault,
            phase: Phase::Running,
            results: Vec::new(),
            output_file_id: None,
            error_file_id: None,
        };
        let view = gemini_view(&id, &job);
        b.jobs.insert(id, job);
        view
    };
    answer_late(&sim).await;
    Json(view).into_response()
}

/// `GET /v1beta/batches`: the batch operations.
pub(super) async fn gemini_list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    if !sim.key_ok(header_str(&headers, "x-goog-api-key")) {
        return gemini_error(401, "UNAUTHENTICATED", "API key not valid.");
    }
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut ops: Vec<(&String, &Job)> = b
        .jobs
        .iter()
        .filter(|(_, j)| j.kind == Kind::Gemini)
        .collect();
    ops.sort_by(|a, b| b.0.cmp(a.0));
    let ops: Vec<Value> = ops.into_iter().map(|(id, j)| gemini_view(id, j)).collect();
    Json(json!({"operations": ops})).into_response()
}

pub(super) async fn gemini_get(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !sim.key_ok(header_str(&headers, "x-goog-api-key")) {
        return gemini_error(401, "UNAUTHENTICATED", "API key not valid.");
    }
    let id = format!("batches/{id}");
    advance(&sim, &id).await;
    let Ok(b) = sim.batches.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match b.jobs.get(&id) {
        Some(j) if j.kind == Kind::Gemini => Json(gemini_view(&id, j)).into_response(),
        _ => gemini_error(404, "NOT_FOUND", "batch not found"),
    }
}

/// `POST /v1beta/batches/{id}:cancel`.
pub(super) async fn gemini_cancel(
    State(sim): State<Arc<Sim>>,
    Path(call): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !sim.key_ok(header_str(&headers, "x-goog-api-key")) {
        return gemini_error(401, "UNAUTHENTICATED", "API key not valid.");
    }
    let Some(id) = call.strip_suffix(":cancel") else {
        return gemini_error(404, "NOT_FOUND", "unknown method");
    };
    match mark_cancelled(&sim, &format!("batches/{id}")) {
        Some(_) => Json(json!({})).into_response(),
        None => gemini_error(404, "NOT_FOUND", "batch not found"),
    }
}
