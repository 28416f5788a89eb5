//! OpenAI Chat Completions and the OpenAI-compatible family (DeepSeek, OpenRouter, DashScope,
//! Mistral, Groq, Together, xAI, vLLM, ...).
//!
//! `POST {api_base}/chat/completions`, bearer auth, SSE with `data: [DONE]`. The request
//! goes out as the caller wrote it (the family takes OpenAI's parameters), except for
//! reasoning models (`reasoning.rs`). Owns the quirks
//! of the family on the way back: `reasoning` (OpenRouter, Ollama's `/v1`) becomes
//! `reasoning_content`, DeepSeek's `prompt_cache_hit_tokens` becomes `cached_tokens`, Azure's
//! empty prompt-filter chunks are skipped, and errors inside a 200 stream (OpenAI's bare
//! `error` payload, OpenRouter's error chunk) are caught before a payload is read as a
//! chunk. Classification for the family (and Azure) lives here.

use bytes::Bytes;
use serde::Deserialize;
use sluice_core::config::Deployment;
use sluice_schemas::openai::{ChatCompletion, ChatCompletionChunk, ChatRequest, Content, Usage};
use sluice_schemas::sse::SseEvent;
use sluice_schemas::ErrorClass;

use super::chunk::{Emitted, EventError};
use super::error::{is_context_message, status_class, ProviderError};
use super::params::Params;
use super::wire::{Framing, Normalise, Wire};

/// `request.stream` and `request.stream_options` are already set by [`super::Providers::call`].
fn build(
    http: &reqwest::Client,
    d: &Deployment,
    request: &ChatRequest,
    params: &mut Params,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let body = super::reasoning::adapt(d, request, params)?;
    // Sized for the prompt up front: serde_json's own buffer starts at 128 bytes and is
    // copied each time it doubles on the way to a long prompt's size.
    let mut json = Vec::with_capacity(BODY_MARGIN + text_len(&body));
    serde_json::to_writer(&mut json, &*body).map_err(|e| {
        ProviderError::new(
            ErrorClass::Internal,
            format!("cannot encode the request: {e}"),
        )
    })?;
    let mut req =
        super::request::post_chat(http, d, |d| format!("{}/chat/completions", d.api_base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
    if let Some(key) = &d.api_key {
        req = req.bearer_auth(key.expose());
    }
    Ok(req)
}

/// Bytes of a request body beside its message texts (field names, parameters, framing).
const BODY_MARGIN: usize = 1024;

/// Bytes of the message texts of `request`.
fn text_len(request: &ChatRequest) -> usize {
    request
        .messages
        .iter()
        .flat_map(|m| m.content.iter().flat_map(Content::texts))
        .map(str::len)
        .sum()
}

/// Reads a whole `chat.completion`, with the family's field quirks normalised.
fn parse_completion(bytes: &[u8]) -> Result<ChatCompletion, ProviderError> {
    // DeepSeek answers queued non-streamed requests with blank lines before the JSON.
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let bytes = &bytes[start..];
    let mut completion: ChatCompletion = match serde_json::from_slice(bytes) {
        Ok(c) => c,
        Err(_) => {
            return Err(payload_error(bytes).unwrap_or_else(|| {
                ProviderError::new(
                    ErrorClass::Server,
                    "provider returned a malformed completion",
                )
            }))
        }
    };
    // The family's extra fields are rare: parse a second time only when one is there.
    let extras = std::str::from_utf8(bytes).map_or(true, |s| {
        s.contains("\"reasoning\"") || s.contains("\"prompt_cache_hit_tokens\"")
    });
    if let Some(extra) = extras
        .then(|| serde_json::from_slice::<CompletionExtras>(bytes).ok())
        .flatten()
    {
        for (choice, x) in completion.choices.iter_mut().zip(extra.choices) {
            if choice.message.reasoning_content.is_none() {
                choice.message.reasoning_content = x.message.reasoning;
            }
        }
        if let (Some(u), Some(x)) = (completion.usage.as_mut(), extra.usage) {
            x.apply(u);
        }
    }
    Ok(completion)
}

/// Fields the family sends outside OpenAI's schema.
#[derive(Deserialize)]
struct CompletionExtras {
    #[serde(default)]
    choices: Vec<ChoiceExtras>,
    #[serde(default)]
    usage: Option<UsageExtras>,
}

#[derive(Deserialize)]
struct ChoiceExtras {
    #[serde(default, alias = "delta")]
    message: MessageExtras,
}

#[derive(Deserialize, Default)]
struct MessageExtras {
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct ChunkExtras {
    #[serde(default)]
    choices: Vec<ChoiceExtras>,
    #[serde(default)]
    usage: Option<UsageExtras>,
}

/// DeepSeek's cache counters (`prompt_tokens = hit + miss`).
#[derive(Deserialize)]
struct UsageExtras {
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

impl UsageExtras {
    fn apply(self, u: &mut Usage) {
        if let Some(hit) = self.prompt_cache_hit_tokens {
            let d = u.prompt_tokens_details.get_or_insert_with(Default::default);
            if d.cached_tokens.unwrap_or(0) == 0 {
                d.cached_tokens = Some(hit);
            }
        }
    }
}

/// Normalises one OpenAI-family SSE stream.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    done: bool,
}

impl Normalise for StreamState {
    fn complete(&self) -> bool {
        self.done
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<Emitted>) -> Result<(), EventError> {
        if self.done {
            return Ok(());
        }
        let data = ev.data;
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        // An error object can arrive in place of (or inside) a chunk after the 200.
        if data.contains("\"error\"") {
            if let Some(e) = payload_error(data.as_bytes()) {
                return Err(e.into());
            }
        }
        let mut chunk: ChatCompletionChunk =
            serde_json::from_str(&data).map_err(|_| EventError::Malformed)?;
        // Azure's prompt-filter chunks carry neither choices nor usage.
        if chunk.choices.is_empty() && chunk.usage.is_none() {
            return Ok(());
        }
        let mut exact = true;
        let has_reasoning = data.contains("\"reasoning\"");
        let has_cache = chunk.usage.is_some() && data.contains("\"prompt_cache_hit_tokens\"");
        if has_reasoning || has_cache {
            if let Ok(x) = serde_json::from_str::<ChunkExtras>(&data) {
                for (c, x) in chunk.choices.iter_mut().zip(x.choices) {
                    if c.delta.reasoning_content.is_none() && x.message.reasoning.is_some() {
                        c.delta.reasoning_content = x.message.reasoning;
                        exact = false;
                    }
                }
                if let (Some(u), Some(x)) = (chunk.usage.as_mut(), x.usage) {
                    x.apply(u);
                    exact = false;
                }
            }
        }
        out.push(Emitted {
            chunk,
            // The payload's own bytes: forwarded as they are, without a copy.
            raw: exact.then(|| Bytes::from(data)),
        });
        Ok(())
    }

    fn terminator(&self) -> &'static str {
        "data: [DONE]"
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorObject,
}

#[derive(Deserialize, Default)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    innererror: Option<serde_json::Value>,
}

impl ErrorObject {
    fn code_str(&self) -> String {
        match &self.code {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }
}

/// An error object sent with a 200 (e.g. mid-stream); `None` if `bytes` is not one.
fn payload_error(bytes: &[u8]) -> Option<ProviderError> {
    let env: ErrorEnvelope = serde_json::from_slice(bytes).ok()?;
    // OpenRouter puts the HTTP status in `code`; OpenAI's bare error has no status.
    let status = match env.error.code.as_ref().and_then(|c| c.as_u64()) {
        Some(s) if (400..=599).contains(&s) => s as u16,
        _ => 500,
    };
    Some(classify_error("", status, env.error))
}

/// Classifies a non-2xx response from the family (and Azure).
fn classify(provider: &str, status: u16, body: &str) -> ProviderError {
    let obj = serde_json::from_str::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| ErrorObject {
            message: Some(body.to_string()),
            ..Default::default()
        });
    classify_error(provider, status, obj)
}

fn classify_error(provider: &str, status: u16, obj: ErrorObject) -> ProviderError {
    let code = obj.code_str();
    let kind = obj.kind.clone().unwrap_or_default();
    let message = obj
        .message
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let lower = message.to_ascii_lowercase();
    let inner = obj
        .innererror
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default();
    let class = if code == "context_length_exceeded" || is_context_message(&lower) {
        ErrorClass::ContextWindow
    } else if code == "content_filter"
        || code == "content_policy_violation"
        || code == "data_inspection_failed"
        || inner.contains("ResponsibleAIPolicyViolation")
        || lower.contains("content management policy")
        || (provider == "openrouter" && status == 403)
    {
        ErrorClass::ContentPolicy
    } else {
        match status_class(Some(status)) {
            // Out of credit is not a rate limit: waiting does not help.
            Some(ErrorClass::RateLimit)
                if code == "insufficient_quota" || kind == "insufficient_quota" =>
            {
                ErrorClass::Auth
            }
            Some(class) => class,
            None if kind == "server_error" || code == "server_error" => ErrorClass::Server,
            None => ErrorClass::BadRequest,
        }
    };
    let mut e = ProviderError::new(class, message);
    e.status = Some(status);
    e
}

/// The OpenAI Chat Completions family.
pub(crate) struct OpenAi;

impl Wire for OpenAi {
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Deployment,
        request: &ChatRequest,
        _stream: bool,
        params: &mut Params,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        build(http, d, request, params)
    }

    fn completion(&self, bytes: &[u8], _model: &str) -> Result<ChatCompletion, ProviderError> {
        parse_completion(bytes)
    }

    fn stream(&self, _model: &str) -> (Framing, Box<dyn Normalise>) {
        (Framing::Sse, Box::new(StreamState::default()))
    }

    fn classify(&self, provider: &str, status: u16, body: &str) -> ProviderError {
        classify(provider, status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::StreamDecoder;
    use super::*;

    #[test]
    fn error_bodies_are_classified_by_code_then_status() {
        let c = |status, body| classify("openai", status, body).class;
        let ctx = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(c(400, ctx), ErrorClass::ContextWindow);
        let deepseek = r#"{"error":{"message":"This model's maximum context length is 131072 tokens. However, you requested 131134 tokens (122942 in the messages, 8192 in the completion).","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#;
        assert_eq!(c(400, deepseek), ErrorClass::ContextWindow);
        let dashscope = r#"{"error":{"code":"invalid_parameter_error","type":"invalid_request_error","message":"<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 983616]"}}"#;
        assert_eq!(c(400, dashscope), ErrorClass::ContextWindow);
        let moderation = r#"{"error":{"code":"data_inspection_failed","type":"data_inspection_failed","param":null,"message":"Input data may contain inappropriate content."},"request_id":"r"}"#;
        assert_eq!(c(400, moderation), ErrorClass::ContentPolicy);
        let rl = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(c(429, rl), ErrorClass::RateLimit);
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(c(429, quota), ErrorClass::Auth);
        assert_eq!(c(503, "overloaded"), ErrorClass::Overloaded);
        assert_eq!(c(502, "<html>bad gateway</html>"), ErrorClass::Server);
        assert_eq!(c(401, "{}"), ErrorClass::Auth);
        assert_eq!(c(402, "{}"), ErrorClass::Auth);
        let azure = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","code":"content_filter","innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"jailbreak":{"detected":true,"filtered":true}}}}}"#;
        assert_eq!(c(400, azure), ErrorClass::ContentPolicy);
        let azure_rl = r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}"#;
        assert_eq!(c(429, azure_rl), ErrorClass::RateLimit);
        let flagged = r#"{"error":{"code":403,"message":"Input was flagged","metadata":{"reasons":["violence"]}}}"#;
        assert_eq!(
            classify("openrouter", 403, flagged).class,
            ErrorClass::ContentPolicy
        );
    }

    fn decode(input: &[u8]) -> (Vec<Emitted>, Result<(), ProviderError>) {
        let mut d = StreamDecoder::for_wire(&OpenAi, "m");
        let mut out = Vec::new();
        for piece in input.chunks(7) {
            if let Err(e) = d.feed(piece, &mut out) {
                return (out, Err(e));
            }
        }
        let r = d.finish(&mut out);
        (out, r)
    }

    /// A stream as OpenAI sends it, with DeepSeek keep-alives and CRLF framing.
    #[test]
    fn fixture_stream_with_keepalives_and_crlf_passes_chunks_through() {
        let body = "\
: keep-alive\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n\
: OPENROUTER PROCESSING\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Think.\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\r\n\r\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\"prompt_cache_hit_tokens\":8,\"prompt_cache_miss_tokens\":1,\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\r\n\r\n\
data: [DONE]\r\n\r\n";
        let (out, r) = decode(body.as_bytes());
        r.unwrap();
        assert_eq!(out.len(), 5);
        assert!(out[0].raw.is_some(), "plain OpenAI chunks pass through");
        assert_eq!(
            out[1].chunk.choices[0].delta.reasoning_content.as_deref(),
            Some("Think.")
        );
        let u = out[4].chunk.usage.unwrap();
        assert_eq!(
            u.cached_tokens(),
            8,
            "DeepSeek cache hits become cached_tokens"
        );
        assert_eq!(u.reasoning_tokens(), 2);
        assert!(out[4].raw.is_none(), "rewritten chunks are re-encoded");
    }

    #[test]
    fn streamed_tool_call_fragments_and_openrouter_reasoning() {
        let body = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning":"hmm"},"finish_reason":null}]}

data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}

data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}

data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}

data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]
"#;
        let (out, r) = decode(body.as_bytes());
        r.unwrap();
        let mut acc = super::super::accumulate::Accumulator::new();
        for e in &out {
            acc.push(&e.chunk);
        }
        let c = acc.finish();
        let m = &c.choices[0].message;
        assert_eq!(m.reasoning_content.as_deref(), Some("hmm"));
        let tc = &m.tool_calls.as_ref().unwrap()[0];
        assert_eq!(tc.function.name, "get_weather");
        assert_eq!(tc.function.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn azure_prompt_filter_chunk_is_skipped() {
        let body = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let (out, r) = decode(body.as_bytes());
        r.unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn errors_inside_a_200_stream_and_cut_streams_are_classified() {
        let openai = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\ndata: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n";
        let (out, r) = decode(openai.as_bytes());
        assert_eq!(out.len(), 1);
        assert_eq!(r.unwrap_err().class, ErrorClass::Server);
        let openrouter = r#"data: {"id":"cmpl-abc123","object":"chat.completion.chunk","created":1234567890,"model":"gpt-3.5-turbo","provider":"openai","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}

"#;
        let (_, r) = decode(openrouter.as_bytes());
        let e = r.unwrap_err();
        assert_eq!(e.class, ErrorClass::Server);
        assert!(e.message.contains("Provider disconnected"));
        let cut = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n";
        let (_, r) = decode(cut.as_bytes());
        assert_eq!(r.unwrap_err().class, ErrorClass::TruncatedStream);
        let cut_mid_payload = "data: {\"id\":\"c\",\"object\":\"chat.comp";
        let (_, r) = decode(cut_mid_payload.as_bytes());
        assert_eq!(r.unwrap_err().class, ErrorClass::TruncatedStream);
        let garbage = "data: {not json\n\ndata: [DONE]\n\n";
        let (_, r) = decode(garbage.as_bytes());
        assert_eq!(r.unwrap_err().class, ErrorClass::Server);
    }

    #[test]
    fn completion_with_reasoning_field_and_leading_blank_lines() {
        let body = b"\n\n{\"id\":\"x\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"message\":{\"role\":\"assistant\",\"content\":\"ok\",\"reasoning\":\"because\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_cache_hit_tokens\":4}}";
        let c = parse_completion(body).unwrap();
        assert_eq!(
            c.choices[0].message.reasoning_content.as_deref(),
            Some("because")
        );
        assert_eq!(c.usage.unwrap().cached_tokens(), 4);
    }
}
