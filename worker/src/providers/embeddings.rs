//! Embeddings over every protocol that has them, normalised to OpenAI's `list` of float
//! vectors (the job's `encoding_format` is applied once the whole answer is known, see
//! `worker/src/job/embed.rs`):
//!
//! | protocol | call | answer |
//! |---|---|---|
//! | OpenAI family | `POST {api_base}/embeddings`, bearer | `data[].embedding`, `usage.prompt_tokens` |
//! | Azure | `…/openai/deployments/{d}/embeddings?api-version=…` or `…/openai/v1/embeddings`, `api-key` | as OpenAI |
//! | Gemini | one input: `models/{m}:embedContent`; more: `:batchEmbedContents`, ≤100 a call | `embedding.values` / `embeddings[].values`, no usage |
//! | Ollama | `POST {api_base}/api/embed` | `embeddings`, `prompt_eval_count` |
//!
//! Anthropic has no embeddings API: a deployment of it fails `bad_request`. Upstream
//! vectors always come as floats (base64 answers are decoded), so cached entries and
//! answers share one form. Non-2xx answers are classified by the protocol's own rules
//! ([`super::protocols::classify`]).

use std::time::Instant;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_core::config::{Deployment, Protocol};
use sluice_schemas::embeddings::{
    EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse, InputItem, Vector,
};
use sluice_schemas::job::JobResult;
use sluice_schemas::openai::Usage;
use sluice_schemas::ErrorClass;

use super::error::ProviderError;
use super::output::CallOutput;
use super::protocols::classify;
use super::ratelimit::RateLimits;
use super::{azure, gemini};

/// Most inputs in one `batchEmbedContents` call (Gemini's limit).
const GEMINI_BATCH: usize = 100;

/// Embeds `request`'s inputs with `d`; the answer's vectors are floats, in input order.
/// `usage` is `None` when the provider did not report it (Gemini).
pub(super) async fn call(
    http: &reqwest::Client,
    d: &Deployment,
    request: &EmbeddingsRequest,
) -> Result<CallOutput, ProviderError> {
    let started = Instant::now();
    let items = request.input.items();
    let (vectors, prompt_tokens, rate_limits) = match d.protocol {
        Protocol::OpenAi | Protocol::Azure => openai_family(http, d, request).await?,
        Protocol::Gemini => gemini_embed(http, d, request, &items).await?,
        Protocol::Ollama => ollama_embed(http, d, request, &items).await?,
        Protocol::Anthropic => {
            return Err(ProviderError::new(
                ErrorClass::BadRequest,
                format!(
                    "deployment {} speaks the Anthropic protocol, which has no embeddings API",
                    d.id
                ),
            ))
        }
    };
    if vectors.len() != items.len() {
        return Err(ProviderError::new(
            ErrorClass::Server,
            format!(
                "provider returned {} embeddings for {} inputs",
                vectors.len(),
                items.len()
            ),
        ));
    }
    let vectors = vectors.into_iter().map(Vector::Float).collect();
    let response = EmbeddingsResponse::new(&d.model, vectors, prompt_tokens.unwrap_or(0));
    Ok(CallOutput {
        result: JobResult::Embeddings(response),
        usage: prompt_tokens.map(|p| Usage::new(p, 0)),
        ttft: None,
        latency: started.elapsed(),
        dropped_params: Vec::new(),
        rate_limits,
    })
}

type Embedded = (Vec<Vec<f32>>, Option<u64>, Option<RateLimits>);

/// Sends `req` and returns the 2xx body, or the protocol's error for anything else
/// (redirects are not followed, as for chat calls).
async fn send(
    d: &Deployment,
    req: reqwest::RequestBuilder,
) -> Result<(bytes::Bytes, Option<RateLimits>), ProviderError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::from_reqwest(&e))?;
    let status = resp.status();
    let rate_limits = RateLimits::from_headers(resp.headers());
    if status.is_redirection() {
        return Err(super::error::redirect_error(
            status.as_u16(),
            resp.headers(),
        ));
    }
    if !status.is_success() {
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        return Err(classify(d, status.as_u16(), &headers, &text));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ProviderError::from_reqwest(&e))?;
    Ok((bytes, rate_limits))
}

fn malformed(what: &str) -> ProviderError {
    ProviderError::new(
        ErrorClass::Server,
        format!("provider returned a malformed {what}"),
    )
}

/// OpenAI and its compatible family, and Azure: OpenAI's body with the upstream model.
async fn openai_family(
    http: &reqwest::Client,
    d: &Deployment,
    request: &EmbeddingsRequest,
) -> Result<Embedded, ProviderError> {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(d.model.clone()));
    body.insert(
        "input".into(),
        serde_json::to_value(&request.input).map_err(|_| malformed("request"))?,
    );
    if let Some(n) = request.dimensions {
        body.insert("dimensions".into(), n.into());
    }
    body.insert("encoding_format".into(), "float".into());
    if let Some(u) = &request.user {
        body.insert("user".into(), Value::String(u.clone()));
    }
    for (k, v) in &request.extra {
        body.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let req = if d.protocol == Protocol::Azure {
        let mut r = http.post(azure::operation_url(d, "embeddings")).json(&body);
        if let Some(key) = &d.api_key {
            r = r.header("api-key", key.expose());
        }
        r
    } else {
        let mut r = http.post(format!("{}/embeddings", d.api_base)).json(&body);
        if let Some(key) = &d.api_key {
            r = r.bearer_auth(key.expose());
        }
        r
    };
    let (bytes, limits) = send(d, req).await?;
    let answer: EmbeddingsResponse =
        serde_json::from_slice(&bytes).map_err(|_| malformed("embeddings answer"))?;
    let mut data = answer.data;
    data.sort_by_key(|e| e.index);
    let vectors = data
        .into_iter()
        .map(|e| floats(e.embedding))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = Some(answer.usage.prompt_tokens).filter(|t| *t > 0);
    Ok((vectors, tokens, limits))
}

/// A vector as floats (decoding a base64 one).
fn floats(v: Vector) -> Result<Vec<f32>, ProviderError> {
    match v {
        Vector::Float(f) => Ok(f),
        Vector::Base64(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| malformed("base64 embedding"))?;
            if bytes.len() % 4 != 0 {
                return Err(malformed("base64 embedding"));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
    }
}

/// The texts of `items`; providers that take no token ids refuse those.
fn texts<'a>(d: &Deployment, items: &[InputItem<'a>]) -> Result<Vec<&'a str>, ProviderError> {
    items
        .iter()
        .map(|i| match i {
            InputItem::Text(t) => Ok(*t),
            InputItem::Tokens(_) => Err(ProviderError::new(
                ErrorClass::BadRequest,
                format!("deployment {} takes text inputs only, not token ids", d.id),
            )),
        })
        .collect()
}

#[derive(Deserialize)]
struct GeminiValues {
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct GeminiOne {
    embedding: GeminiValues,
}

#[derive(Deserialize)]
struct GeminiMany {
    #[serde(default)]
    embeddings: Vec<GeminiValues>,
}

/// Gemini: `embedContent` for one input, `batchEmbedContents` (≤100 a call) for more.
/// `task_type` (LiteLLM's name) or `taskType` is passed on.
async fn gemini_embed(
    http: &reqwest::Client,
    d: &Deployment,
    request: &EmbeddingsRequest,
    items: &[InputItem<'_>],
) -> Result<Embedded, ProviderError> {
    let texts = texts(d, items)?;
    let task = request
        .extra
        .get("task_type")
        .or_else(|| request.extra.get("taskType"))
        .and_then(Value::as_str);
    let one = |text: &str| {
        let mut r = json!({ "content": { "parts": [{ "text": text }] } });
        if let Some(n) = request.dimensions {
            r["outputDimensionality"] = n.into();
        }
        if let Some(t) = task {
            r["taskType"] = t.into();
        }
        r
    };
    let post = |url: String, body: Value| {
        let mut r = http.post(url).json(&body);
        if let Some(key) = &d.api_key {
            r = r.header("x-goog-api-key", key.expose());
        }
        r
    };
    if let [text] = texts.as_slice() {
        let (bytes, limits) =
            send(d, post(gemini::method_url(d, "embedContent"), one(text))).await?;
        let answer: GeminiOne =
            serde_json::from_slice(&bytes).map_err(|_| malformed("embedContent answer"))?;
        return Ok((vec![answer.embedding.values], None, limits));
    }
    let mut vectors = Vec::with_capacity(texts.len());
    let mut limits = None;
    let name = format!("models/{}", d.model);
    for batch in texts.chunks(GEMINI_BATCH) {
        let requests: Vec<Value> = batch
            .iter()
            .map(|t| {
                let mut r = one(t);
                r["model"] = Value::String(name.clone());
                r
            })
            .collect();
        let body = json!({ "requests": requests });
        let (bytes, l) = send(d, post(gemini::method_url(d, "batchEmbedContents"), body)).await?;
        let answer: GeminiMany =
            serde_json::from_slice(&bytes).map_err(|_| malformed("batchEmbedContents answer"))?;
        if answer.embeddings.len() != batch.len() {
            return Err(malformed("batchEmbedContents answer (count)"));
        }
        vectors.extend(answer.embeddings.into_iter().map(|e| e.values));
        limits = l;
    }
    Ok((vectors, None, limits))
}

#[derive(Deserialize)]
struct OllamaAnswer {
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
}

/// Ollama's native `/api/embed`; `truncate`, `keep_alive` and `options` are passed on.
async fn ollama_embed(
    http: &reqwest::Client,
    d: &Deployment,
    request: &EmbeddingsRequest,
    items: &[InputItem<'_>],
) -> Result<Embedded, ProviderError> {
    let texts = texts(d, items)?;
    let mut body = json!({ "model": d.model, "input": texts });
    if let Some(n) = request.dimensions {
        body["dimensions"] = n.into();
    }
    for k in ["truncate", "keep_alive", "options"] {
        if let Some(v) = request.extra.get(k) {
            body[k] = v.clone();
        }
    }
    let mut req = http.post(format!("{}/api/embed", d.api_base)).json(&body);
    if let Some(key) = &d.api_key {
        req = req.bearer_auth(key.expose());
    }
    let (bytes, limits) = send(d, req).await?;
    let answer: OllamaAnswer =
        serde_json::from_slice(&bytes).map_err(|_| malformed("/api/embed answer"))?;
    Ok((answer.embeddings, answer.prompt_eval_count, limits))
}

/// `request` narrowed to the inputs at `keep` (the ones a cache did not answer).
pub fn narrowed(request: &EmbeddingsRequest, keep: &[usize]) -> EmbeddingsRequest {
    let items = request.input.items();
    let kept: Vec<InputItem<'_>> = keep.iter().filter_map(|&i| items.get(i).copied()).collect();
    EmbeddingsRequest {
        input: EmbeddingInput::from_items(&kept),
        ..request.clone()
    }
}

/// Encodes float vectors as OpenAI's base64 (little-endian float32 bytes).
pub fn to_base64(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for f in v {
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_float32_little_endian() {
        let v = vec![0.5f32, -1.25, 3.0];
        let b = to_base64(&v);
        assert_eq!(floats(Vector::Base64(b)).unwrap(), v);
        assert!(floats(Vector::Base64("AAA=".into())).is_err());
    }
}
