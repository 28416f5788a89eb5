//! Receivers of what Sluice exports, for the observability tests: an OTLP/HTTP trace
//! receiver (`POST /v1/traces`, protobuf decoded with the opentelemetry-proto types) and a
//! Langfuse-compatible ingestion endpoint (`POST /api/public/ingestion`, basic auth,
//! answering 207 as Langfuse does). Both keep what they received for the test to read,
//! and either can be told to fail its next posts (503) to exercise the senders' retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as ProtoValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::{json, Value};

/// One received span.
#[derive(Debug, Clone)]
pub struct SpanSeen {
    pub service: String,
    pub name: String,
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP `SpanKind` (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    pub attributes: HashMap<String, Value>,
}

impl SpanSeen {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
}

/// One Langfuse ingestion request: its `Authorization` header and its batch.
#[derive(Debug, Clone)]
pub struct IngestionSeen {
    pub authorization: Option<String>,
    pub batch: Vec<Value>,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<SpanSeen>>,
    ingestions: Mutex<Vec<IngestionSeen>>,
    /// Posts still to refuse, per endpoint.
    fail_traces: AtomicUsize,
    fail_ingestions: AtomicUsize,
    /// Posts refused so far, per endpoint.
    refused_traces: AtomicUsize,
    refused_ingestions: AtomicUsize,
    /// Refuse each trace export the first time its body is seen (a retry is let in).
    refuse_first_exports: std::sync::atomic::AtomicBool,
    exports_seen: Mutex<std::collections::HashSet<u64>>,
}

/// Takes one from `left` if it is above zero: whether this post is to be refused.
fn refuse(left: &AtomicUsize, refused: &AtomicUsize) -> bool {
    let take = left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if take {
        refused.fetch_add(1, Ordering::SeqCst);
    }
    take
}

/// The running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`: the OTLP endpoint and the Langfuse host.
    pub url: String,
    received: Arc<Received>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        let received = Arc::new(Received::default());
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/api/public/ingestion", post(ingestion))
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            received,
            _server: server,
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanSeen> {
        self.received
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Answers the next `n` trace exports with 503 (nothing kept).
    pub fn fail_next_traces(&self, n: usize) {
        self.received.fail_traces.store(n, Ordering::SeqCst);
    }

    /// Answers each trace export with 503 the first time its body arrives, and keeps it
    /// when the same body comes again: only an exporter that retries gets spans in.
    pub fn refuse_first_try_of_each_export(&self) {
        self.received
            .refuse_first_exports
            .store(true, Ordering::SeqCst);
    }

    /// Answers the next `n` Langfuse ingestion posts with 503 (nothing kept).
    pub fn fail_next_ingestions(&self, n: usize) {
        self.received.fail_ingestions.store(n, Ordering::SeqCst);
    }

    /// Trace exports and ingestion posts refused so far.
    pub fn refused(&self) -> (usize, usize) {
        (
            self.received.refused_traces.load(Ordering::SeqCst),
            self.received.refused_ingestions.load(Ordering::SeqCst),
        )
    }

    /// Every ingestion request received so far.
    pub fn ingestions(&self) -> Vec<IngestionSeen> {
        self.received
            .ingestions
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<&ProtoValue>) -> Value {
    match v {
        Some(ProtoValue::StringValue(s)) => json!(s),
        Some(ProtoValue::BoolValue(b)) => json!(b),
        Some(ProtoValue::IntValue(i)) => json!(i),
        Some(ProtoValue::DoubleValue(d)) => json!(d),
        Some(ProtoValue::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| value(v.value.as_ref())).collect())
        }
        Some(ProtoValue::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|k| {
                    (
                        k.key.clone(),
                        value(k.value.as_ref().and_then(|v| v.value.as_ref())),
                    )
                })
                .collect(),
        ),
        Some(ProtoValue::BytesValue(b)) => json!(hex(b)),
        None => Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                value(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

async fn traces(State(received): State<Arc<Received>>, body: Bytes) -> impl IntoResponse {
    if refuse(&received.fail_traces, &received.refused_traces) {
        return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
    }
    if received.refuse_first_exports.load(Ordering::SeqCst) {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        let first = received
            .exports_seen
            .lock()
            .map(|mut seen| seen.insert(h.finish()))
            .unwrap_or(false);
        if first {
            received.refused_traces.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
        }
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut seen = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                seen.push(SpanSeen {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    if let Ok(mut spans) = received.spans.lock() {
        spans.extend(seen);
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn ingestion(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    if refuse(&received.fail_ingestions, &received.refused_ingestions) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"message": "try again"})),
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "bad json"})),
        );
    };
    let batch = v["batch"].as_array().cloned().unwrap_or_default();
    let successes: Vec<Value> = batch
        .iter()
        .map(|e| json!({"id": e["id"], "status": 201}))
        .collect();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Ok(mut seen) = received.ingestions.lock() {
        seen.push(IngestionSeen {
            authorization,
            batch,
        });
    }
    (
        StatusCode::MULTI_STATUS,
        axum::Json(json!({"successes": successes, "errors": []})),
    )
}
