//! The provider simulator: an upstream that speaks every protocol Sluice adapts, on the
//! real paths with the real framing:
//!
//! | protocol | path | stream framing |
//! |---|---|---|
//! | OpenAI (and the compatible family) | `/v1/chat/completions`, `/chat/completions` | SSE `data:` + `[DONE]` |
//! | Azure OpenAI | `/openai/deployments/{d}/chat/completions?api-version=…`, `/openai/v1/chat/completions` | as OpenAI, prompt-filter chunk first |
//! | Anthropic | `/v1/messages` | named SSE events, `message_stop` |
//! | Gemini | `/v1beta/models/{m}:generateContent`, `…:streamGenerateContent?alt=sse` | SSE `data:`, ends after `finishReason` |
//! | Ollama | `/api/chat` | NDJSON, `done:true` |
//!
//! Embeddings on each protocol's path are in [`embeddings`].
//!
//! Answers are deterministic (the same request and seed give the same words), with a tool
//! call when tools are given (and the last turn is not a tool result) and reasoning output
//! for reasoning models (a model name containing `reason` or `think`, or a request asking
//! for thinking). It counts every request and keeps the last body, so tests can compare
//! calls made with calls recorded and check request mapping.
//!
//! Faults are scriptable per instance ([`SimConfig`]) and per request with headers:
//! `x-sim-fault` (a [`Fault`] name), `x-sim-latency-ms`, `x-sim-ttft-ms`, `x-sim-chunks`,
//! `x-sim-chunk-interval-ms`, `x-sim-crlf: 1` (CRLF framing), `x-sim-keepalive: 1`
//! (`: keep-alive` comments before and between events).
//!
//! Hostile faults (OpenAI protocol): NUL characters in the answer, absurd `Retry-After`
//! and rate-limit values, a huge choice index, a redirect to another host, a 1.5 MB
//! answer (see [`Fault`]).

mod anthropic;
mod batches;
pub mod embeddings;
mod gemini;
mod ollama;
mod openai;
mod plan;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use batches::{BatchFault, LINE_ERROR};
pub use plan::Plan;

/// How the simulator behaves unless a request says otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Non-streaming: time until the whole response.
    pub latency_ms: u64,
    /// Streaming: time until the first chunk.
    pub ttft_ms: u64,
    /// Content chunks per response (one word each).
    pub chunks: u32,
    pub chunk_interval_ms: u64,
    /// Report usage (where the protocol has it and, for OpenAI, when asked).
    pub usage: bool,
    /// Fail the first N requests with this fault, then behave.
    pub fail_first: u64,
    pub fault: Option<Fault>,
    /// When set, requests must carry this key in the protocol's auth header.
    pub api_key: Option<String>,
    /// Frame streams with `\r\n` line ends.
    pub crlf: bool,
    /// Send `: keep-alive` comments before and between SSE events.
    pub keepalive: bool,
    /// Add `"sim_sent_us": <unix µs>` to each streamed JSON event as it is sent, so a
    /// load generator can measure chunk lag end to end. Off by default: the wire stays
    /// exactly the provider's.
    pub stamp_chunks: bool,
    /// Where [`Fault::Redirect`] points (a base URL such as `http://127.0.0.1:9`).
    pub redirect_to: Option<String>,
    /// Batch APIs: time from create until a batch has its results.
    pub batch_delay_ms: u64,
    /// Batch APIs: a whole-batch fault for the first `batch_fault_first` batches.
    pub batch_fault: Option<BatchFault>,
    pub batch_fault_first: u64,
    /// Batch APIs (OpenAI, Azure): the enqueued-token limit. A batch whose prompt tokens
    /// (as usage counts them) would take the running batches past it fails with
    /// `token_limit_exceeded`.
    pub batch_enqueued_tokens: Option<u64>,
    /// Batch APIs: create calls answer this late, after the batch exists (a caller that
    /// dies meanwhile has created a batch it never heard of).
    pub batch_create_delay_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: 0,
            ttft_ms: 0,
            chunks: 8,
            chunk_interval_ms: 0,
            usage: true,
            fail_first: 0,
            fault: None,
            api_key: None,
            crlf: false,
            keepalive: false,
            stamp_chunks: false,
            redirect_to: None,
            batch_delay_ms: 0,
            batch_fault: None,
            batch_fault_first: 0,
            batch_enqueued_tokens: None,
            batch_create_delay_ms: 0,
        }
    }
}

/// A scripted failure, rendered in each protocol's own wording and framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// 429 with `Retry-After: 1` (Gemini: `RetryInfo`).
    RateLimit,
    /// 500 server error.
    Server,
    /// The protocol's overload answer: 503 (Anthropic: 529 `overloaded_error`).
    Overloaded,
    /// HTTP 529 (Anthropic's overload status) on any protocol.
    #[serde(rename = "overloaded_529")]
    Overloaded529,
    /// Stream stops after half its chunks, without its terminator; a whole response is
    /// cut off mid-body.
    Truncate,
    /// Accepts the request and never answers.
    Hang,
    /// 400 context-window error in the protocol's wording.
    ContextWindow,
    /// The protocol's content-policy answer (OpenAI: `content_filter` finish with a refusal;
    /// Azure: 400 `content_filter`; Anthropic: `stop_reason: refusal`; Gemini:
    /// `promptFeedback.blockReason`). Ollama has none and answers normally.
    ContentPolicy,
    /// A payload that is not JSON in the middle of the stream (or as the whole body).
    Malformed,
    /// A 200 stream that carries the protocol's error payload halfway through.
    ErrorMidStream,
    /// Usage left out of the response.
    NoUsage,
    /// 401 in the protocol's wording.
    Auth,
    /// 404 in the protocol's wording.
    NotFound,
    /// OpenAI protocol: the answer's text holds NUL characters (`\u0000`).
    NulContent,
    /// OpenAI protocol: 429 with `Retry-After`, `retry-after-ms` and rate-limit resets
    /// absurdly large (`1e300` seconds, `99999999999999h`).
    HugeRetryAfter,
    /// OpenAI protocol, streamed: chunks carry choice index 4294967295.
    HugeIndex,
    /// OpenAI protocol: 307 to [`SimConfig::redirect_to`] (another host).
    Redirect,
    /// OpenAI protocol: an answer of 1.5 MB (`0123456789` repeated), in one piece.
    LargeAnswer,
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

#[derive(Default)]
pub struct SimStats {
    pub requests: AtomicU64,
    pub stream_requests: AtomicU64,
    pub faults: AtomicU64,
    /// The last request: path (with query) and JSON body.
    pub last: Mutex<Option<(String, Value)>>,
    /// Batch APIs: batches created (every protocol), cancelled, and lines answered.
    pub batch_creates: AtomicU64,
    pub batch_cancels: AtomicU64,
    pub batch_lines: AtomicU64,
    /// Batches created past the enqueued-token limit.
    pub batch_over_limit: AtomicU64,
}

struct Sim {
    config: SimConfig,
    stats: Arc<SimStats>,
    batches: Mutex<batches::Batches>,
}

/// A running simulator; stops when dropped.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub stats: Arc<SimStats>,
    _stop: oneshot::Sender<()>,
}

impl SimHandle {
    /// OpenAI-style `api_base` (includes `/v1`).
    pub fn api_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The host form of `api_base` (Anthropic, Gemini, Ollama, Azure).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Upstream batches created so far (every batch API).
    pub fn batch_creates(&self) -> u64 {
        self.stats.batch_creates.load(Ordering::SeqCst)
    }

    /// Batches that failed because they were created past the enqueued-token limit.
    pub fn batch_over_limit(&self) -> u64 {
        self.stats.batch_over_limit.load(Ordering::SeqCst)
    }

    pub fn batch_cancels(&self) -> u64 {
        self.stats.batch_cancels.load(Ordering::SeqCst)
    }

    /// The path and JSON body of the last request.
    pub fn last_request(&self) -> Option<(String, Value)> {
        self.stats.last.lock().ok().and_then(|l| l.clone())
    }
}

/// A provider takes thousands of connections at once (a worker opening its streams): the
/// accept queue is as deep as the kernel allows (`net.core.somaxconn` caps it), not the
/// default 128, whose overflow drops SYNs, delays connects by seconds of retransmits and
/// so made retries that measured the simulator rather than Sluice.
const BACKLOG: u32 = 4096;

/// A listener on `addr` with a [`BACKLOG`]-deep accept queue.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} names no address"))))
}

/// Starts a simulator on `addr` (use port 0 for a free one).
pub async fn start(addr: &str, config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = listen(addr).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(SimStats::default());
    let app = app(config, Arc::clone(&stats));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(SimHandle {
        addr,
        stats,
        _stop: tx,
    })
}

pub fn app(config: SimConfig, stats: Arc<SimStats>) -> Router {
    let sim = Arc::new(Sim {
        config,
        stats,
        batches: Mutex::default(),
    });
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/chat/completions", post(openai::chat))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(openai::azure_deployment),
        )
        .route("/openai/v1/chat/completions", post(openai::azure_v1))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1beta/models/{call}", post(gemini_models))
        .route("/v1/files", post(batches::upload))
        .route("/v1/files/{id}/content", get(batches::file_content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/openai/v1/files", post(batches::azure_upload))
        .route("/openai/v1/files/{id}/content", get(batches::file_content))
        .route(
            "/openai/v1/batches",
            post(batches::azure_create).get(batches::azure_list),
        )
        .route("/openai/v1/batches/{id}", get(batches::azure_get_batch))
        .route(
            "/openai/v1/batches/{id}/cancel",
            post(batches::azure_cancel),
        )
        .route(
            "/v1/messages/batches",
            post(batches::anthropic_create).get(batches::anthropic_list),
        )
        .route("/v1/messages/batches/{id}", get(batches::anthropic_get))
        .route(
            "/v1/messages/batches/{id}/results",
            get(batches::anthropic_results),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(batches::anthropic_cancel),
        )
        .route("/v1beta/batches", get(batches::gemini_list))
        .route(
            "/v1beta/batches/{id}",
            get(batches::gemini_get).post(batches::gemini_cancel),
        )
        .route("/api/chat", post(ollama::chat))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/embeddings", post(embeddings::openai))
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings::azure_deployment),
        )
        .route("/openai/v1/embeddings", post(embeddings::azure_v1))
        .route("/api/embed", post(embeddings::ollama))
        .route("/sim/stats", get(stats_route))
        .with_state(sim)
}

/// `…:generateContent` and `…:streamGenerateContent` live; `…:batchGenerateContent` a batch.
async fn gemini_models(
    state: State<Arc<Sim>>,
    call: axum::extract::Path<String>,
    query: axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match call.0.strip_suffix(":batchGenerateContent") {
        Some(model) => batches::gemini_create(state.0, model, &headers, &body).await,
        None => gemini::generate(state, call, query, headers, body).await,
    }
}

async fn stats_route(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({
        "requests": sim.stats.requests.load(Ordering::SeqCst),
        "stream_requests": sim.stats.stream_requests.load(Ordering::SeqCst),
        "faults": sim.stats.faults.load(Ordering::SeqCst),
    }))
}

/// What one request asked the simulator to do: the instance's settings overridden by the
/// request's `x-sim-*` headers.
#[derive(Debug, Clone)]
struct Script {
    fault: Option<Fault>,
    latency: Duration,
    ttft: Duration,
    interval: Duration,
    chunks: u32,
    usage: bool,
    crlf: bool,
    keepalive: bool,
    stamp: bool,
}

impl Sim {
    /// Counts the request, keeps its body, and reads the script for it.
    fn begin(&self, path: String, headers: &HeaderMap, body: &Value, stream: bool) -> Script {
        let n = self.stats.requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut last) = self.stats.last.lock() {
            *last = Some((path, body.clone()));
        }
        if stream {
            self.stats.stream_requests.fetch_add(1, Ordering::SeqCst);
        }
        let c = &self.config;
        let fault = headers
            .get("x-sim-fault")
            .and_then(|v| v.to_str().ok())
            .and_then(Fault::parse)
            .or(if n < c.fail_first { c.fault } else { None });
        if fault.is_some() {
            self.stats.faults.fetch_add(1, Ordering::SeqCst);
        }
        let ms = |name: &str, default: u64| {
            Duration::from_millis(header_u64(headers, name).unwrap_or(default))
        };
        let flag = |name: &str| headers.get(name).is_some_and(|v| v.as_bytes() == b"1");
        Script {
            fault,
            latency: ms("x-sim-latency-ms", c.latency_ms),
            ttft: ms("x-sim-ttft-ms", c.ttft_ms),
            interval: ms("x-sim-chunk-interval-ms", c.chunk_interval_ms),
            chunks: header_u64(headers, "x-sim-chunks")
                .map(|v| v as u32)
                .unwrap_or(c.chunks),
            usage: c.usage && fault != Some(Fault::NoUsage),
            crlf: c.crlf || flag("x-sim-crlf"),
            keepalive: c.keepalive || flag("x-sim-keepalive"),
            stamp: c.stamp_chunks,
        }
    }

    /// Whether `given` is the key this instance expects (any key when none is set).
    fn key_ok(&self, given: Option<&str>) -> bool {
        match &self.config.api_key {
            None => true,
            Some(k) => given == Some(k.as_str()),
        }
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok()
}

/// A JSON error response with extra headers.
fn json_error(status: u16, body: Value, headers: &[(&'static str, &str)]) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(body)).into_response();
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

/// A whole JSON response after `latency`; with [`Fault::Truncate`] the body stops halfway
/// and the connection is cut; with [`Fault::Malformed`] it is not JSON.
async fn whole(script: &Script, body: Value, headers: &[(&'static str, String)]) -> Response {
    if !script.latency.is_zero() {
        tokio::time::sleep(script.latency).await;
    }
    let text = body.to_string();
    let builder = headers.iter().fold(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json"),
        |b, (k, v)| b.header(*k, v.as_str()),
    );
    let body = match script.fault {
        Some(Fault::Truncate) => {
            let half = Bytes::from(text.as_bytes()[..text.len() / 2].to_vec());
            // Pending between the half and the cut lets the server flush the headers and
            // the half first, so the client sees a 200 whose body breaks off.
            let parts = futures::stream::unfold(0u8, move |step| {
                let half = half.clone();
                async move {
                    match step {
                        0 => Some((Ok(half), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((Err(std::io::Error::other("simulated connection drop")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(parts)
        }
        Some(Fault::Malformed) => Body::from(format!("{{\"id\": {}", &text[..text.len() / 3])),
        _ => Body::from(text),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A streamed answer: its frames, and where a fault strikes.
struct Frames {
    /// Each frame is one event (SSE, ending in a blank line) or one NDJSON line.
    frames: Vec<String>,
    /// Truncation and mid-stream faults strike before this frame.
    mid: usize,
    /// The protocol's error payload for [`Fault::ErrorMidStream`].
    error: String,
    /// A frame that is not valid JSON, for [`Fault::Malformed`].
    malformed: String,
    content_type: &'static str,
    /// Whether `: keep-alive` comments are allowed (SSE only).
    sse: bool,
}

fn stream(script: Script, f: Frames, headers: &[(&'static str, String)]) -> Response {
    let crlf = script.crlf;
    let content_type = f.content_type;
    // The body polls its own schedule (no task and channel per stream): the connection
    // that writes it wakes when the next frame is due, so a chunk costs one timer and one
    // write here, which keeps the simulator cheap beside what it measures.
    let steps = futures::stream::unfold(
        schedule(&script, f).into_iter(),
        move |mut steps| async move {
            loop {
                let text = match steps.next()? {
                    Step::Until(at) => {
                        tokio::time::sleep_until(at).await;
                        continue;
                    }
                    Step::Send(text) => text,
                    Step::Stamped(text) => stamped(text),
                };
                let text = if crlf {
                    text.replace('\n', "\r\n")
                } else {
                    text
                };
                return Some((Ok::<_, std::io::Error>(Bytes::from(text)), steps));
            }
        },
    );
    let builder = headers.iter().fold(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", content_type)
            .header("cache-control", "no-cache"),
        |b, (k, v)| b.header(*k, v.as_str()),
    );
    builder
        .body(Body::from_stream(steps))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One step of a streamed answer.
enum Step {
    /// Wait until then.
    Until(tokio::time::Instant),
    /// Send this text as it is.
    Send(String),
    /// Send this frame with the send time stamped into it (`--stamp-chunks`).
    Stamped(String),
}

/// The steps of a streamed answer, from now: an optional keep-alive, the first frame after
/// `ttft`, then one frame every `interval`, with the script's fault before frame `mid`.
/// Deadlines count from the start, not from the previous frame, so a long stream keeps
/// its schedule (ttft + i x interval) instead of drifting by a timer tick per chunk.
fn schedule(script: &Script, f: Frames) -> Vec<Step> {
    let keepalive = script.keepalive && f.sse;
    let keepalive_frame = || Step::Send(": keep-alive\n\n".into());
    let mut steps = Vec::with_capacity(f.frames.len() * 2 + 3);
    if keepalive {
        steps.push(keepalive_frame());
    }
    let mut due = tokio::time::Instant::now() + script.ttft;
    if !script.ttft.is_zero() {
        steps.push(Step::Until(due));
    }
    for (i, frame) in f.frames.into_iter().enumerate() {
        if i == f.mid {
            match script.fault {
                Some(Fault::Truncate) => return steps, // closes without the terminator
                Some(Fault::ErrorMidStream) => {
                    steps.push(Step::Send(f.error));
                    return steps;
                }
                Some(Fault::Malformed) => steps.push(Step::Send(f.malformed.clone())),
                _ => {}
            }
        }
        if i > 0 && !script.interval.is_zero() {
            due += script.interval;
            steps.push(Step::Until(due));
        }
        if keepalive && i > 0 {
            steps.push(keepalive_frame());
        }
        steps.push(if script.stamp {
            Step::Stamped(frame)
        } else {
            Step::Send(frame)
        });
    }
    steps
}

/// `frame` with `"sim_sent_us":<now>` as the first field of its JSON object, if it has one.
fn stamped(frame: String) -> String {
    let Some(at) = frame.find('{') else {
        return frame;
    };
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{}{{\"sim_sent_us\":{us},{}",
        &frame[..at],
        &frame[at + 1..]
    )
}

/// Seconds since the epoch, for `created` fields.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
