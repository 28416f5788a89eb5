//! Embeddings as each provider serves them, on the real paths:
//!
//! | protocol | path | answer |
//! |---|---|---|
//! | OpenAI | `/v1/embeddings` | `{object:"list", data:[{object:"embedding", index, embedding}], model, usage}`; `encoding_format: base64` honoured |
//! | Azure | `/openai/deployments/{d}/embeddings?api-version=…`, `/openai/v1/embeddings` (`api-key`) | as OpenAI |
//! | Gemini | `/v1beta/models/{m}:embedContent`, `…:batchEmbedContents` (≤100) | `{embedding:{values}}`, `{embeddings:[{values}]}`, no usage |
//! | Ollama | `/api/embed` | `{model, embeddings, total_duration, load_duration, prompt_eval_count}` |
//!
//! Vectors are deterministic ([`vector`]): the same text and dimensions give the same
//! vector everywhere, so tests can compare answers with what the simulator computes.
//! Faults (`x-sim-fault`): `rate_limit`, `server`, `auth` in each protocol's wording.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{header_str, json_error, Fault, Sim};

/// Dimensions of a vector when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 16;

/// The simulator's embedding of `text`: `dims` values, each a multiple of 1/1024 in
/// [-0.5, 0.5) (exact in float32 and in JSON), derived from an FNV-1a hash of the text.
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..dims)
        .map(|j| {
            let x = h.rotate_left((j % 64) as u32) ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ((x % 1024) as f32 - 512.0) / 1024.0
        })
        .collect()
}

/// Tokens the simulator bills for `text` (about four characters a token).
pub fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn texts(input: &Value) -> Option<Vec<String>> {
    match input {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) if a.iter().all(Value::is_string) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        // Token ids: embedded as their decimal text.
        Value::Array(a) if a.iter().all(Value::is_u64) => Some(vec![input.to_string()]),
        Value::Array(a) if a.iter().all(Value::is_array) => {
            Some(a.iter().map(Value::to_string).collect())
        }
        _ => None,
    }
}

fn dims(v: &Value) -> usize {
    v.as_u64().map_or(DEFAULT_DIMENSIONS, |n| n as usize)
}

fn openai_error(status: u16, code: &str, message: &str) -> Response {
    json_error(
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
        &[],
    )
}

pub(super) async fn openai(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = header_str(&headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    let key_ok = sim.key_ok(key);
    openai_family(&sim, "/v1/embeddings".into(), &headers, &body, key_ok, None)
}

pub(super) async fn azure_deployment(
    State(sim): State<Arc<Sim>>,
    Path(deployment): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!(
        "/openai/deployments/{deployment}/embeddings?api-version={}",
        q.get("api-version").map(String::as_str).unwrap_or("")
    );
    if !q.contains_key("api-version") {
        sim.begin(path, &headers, &Value::Null, false);
        return json_error(
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}}),
            &[],
        );
    }
    let key_ok = sim.key_ok(header_str(&headers, "api-key"));
    openai_family(&sim, path, &headers, &body, key_ok, Some(deployment))
}

pub(super) async fn azure_v1(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key_ok = sim.key_ok(header_str(&headers, "api-key"));
    openai_family(
        &sim,
        "/openai/v1/embeddings".into(),
        &headers,
        &body,
        key_ok,
        None,
    )
}

fn openai_family(
    sim: &Sim,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    key_ok: bool,
    deployment: Option<String>,
) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let script = sim.begin(path, headers, &req, false);
    if !key_ok {
        return openai_error(401, "invalid_api_key", "Incorrect API key provided");
    }
    match script.fault {
        Some(Fault::RateLimit) => {
            return json_error(
                429,
                json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                &[("retry-after", "1")],
            )
        }
        Some(Fault::Server) => {
            return openai_error(
                500,
                "internal_error",
                "The server had an error while processing your request.",
            )
        }
        Some(Fault::Auth) => {
            return openai_error(401, "invalid_api_key", "Incorrect API key provided")
        }
        _ => {}
    }
    let Some(texts) = texts(&req["input"]) else {
        return openai_error(400, "invalid_input", "'input' is a required property");
    };
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return openai_error(400, "invalid_input", "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.");
    }
    let model = deployment.unwrap_or_else(|| req["model"].as_str().unwrap_or("sim").to_string());
    let n = dims(&req["dimensions"]);
    let base64 = req["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = vector(t, n);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt: u64 = texts.iter().map(|t| tokens(t)).sum();
    Json(json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }))
    .into_response()
}

fn google_error(code: u16, status: &str, message: &str) -> Response {
    json_error(
        code,
        json!({"error": {"code": code, "message": message, "status": status}}),
        &[],
    )
}

/// `:embedContent` and `:batchEmbedContents` (dispatched from `gemini.rs`).
pub(super) fn gemini(
    sim: &Sim,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    method: &str,
) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let script = sim.begin(path, headers, &req, false);
    if !sim.key_ok(header_str(headers, "x-goog-api-key")) {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
        );
    }
    match script.fault {
        Some(Fault::RateLimit) => {
            return google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            )
        }
        Some(Fault::Server) => {
            return google_error(500, "INTERNAL", "An internal error has occurred.")
        }
        Some(Fault::Auth) => {
            return google_error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers.",
            )
        }
        _ => {}
    }
    let one = |r: &Value| -> Option<Vec<f32>> {
        let text = r["content"]["parts"][0]["text"].as_str()?;
        (!text.is_empty()).then(|| vector(text, dims(&r["outputDimensionality"])))
    };
    if method == "embedContent" {
        return match one(&req) {
            Some(v) => Json(json!({"embedding": {"values": v}})).into_response(),
            None => google_error(
                400,
                "INVALID_ARGUMENT",
                "* EmbedContentRequest.content: contents is not specified",
            ),
        };
    }
    let requests = req["requests"].as_array().cloned().unwrap_or_default();
    if requests.is_empty() || requests.len() > 100 {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch",
        );
    }
    let mut out = Vec::with_capacity(requests.len());
    for r in &requests {
        match one(r) {
            Some(v) => out.push(json!({"values": v})),
            None => {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "* BatchEmbedContentsRequest.requests[].content: contents is not specified",
                )
            }
        }
    }
    Json(json!({"embeddings": out})).into_response()
}

pub(super) async fn ollama(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let script = sim.begin("/api/embed".into(), &headers, &req, false);
    let error = |status: u16, m: &str| json_error(status, json!({ "error": m }), &[]);
    match script.fault {
        Some(Fault::RateLimit) => {
            return json_error(
                429,
                json!({"error": "too many requests"}),
                &[("retry-after", "1")],
            )
        }
        Some(Fault::Server) => {
            return error(500, "llama runner process has terminated: exit status 2")
        }
        Some(Fault::Auth) => return error(401, "unauthorized"),
        _ => {}
    }
    let model = req["model"].as_str().unwrap_or("").to_string();
    if model.is_empty() {
        return error(400, "model is required");
    }
    let Some(texts) = texts(&req["input"]).filter(|t| !t.is_empty()) else {
        return error(400, "invalid input type");
    };
    let n = dims(&req["dimensions"]);
    // Ollama answers L2-normalised vectors; the simulator's are left as they are, which
    // keeps them exact (a test compares them with `vector`).
    let embeddings: Vec<Vec<f32>> = texts.iter().map(|t| vector(t, n)).collect();
    let prompt: u64 = texts.iter().map(|t| tokens(t)).sum();
    Json(json!({
        "model": model, "embeddings": embeddings,
        "total_duration": 14_143_917u64, "load_duration": 1_019_500u64, "prompt_eval_count": prompt,
    }))
    .into_response()
}
