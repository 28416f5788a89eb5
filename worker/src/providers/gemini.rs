//! Google Gemini Generative Language API.
//!
//! `POST {api_base}/v1beta/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` when streaming; `x-goog-api-key` auth (never the `?key=`
//! query, so the key cannot reach a logged URL). The request mapping lifts system messages
//! to `systemInstruction`, turns turns into `contents` (`user`/`model`, function calls and
//! `functionResponse`s named from the earlier call), tools into `functionDeclarations`,
//! `tool_choice` into `functionCallingConfig`, and sampling, `stop`, `seed`, `n`,
//! `response_format` and `reasoning_effort` into `generationConfig`. Responses (whole
//! `GenerateContentResponse`s, also per SSE event) are normalised: text, `thought` parts as
//! `reasoning_content`, `functionCall` parts as whole tool calls, `finishReason` mapped
//! (safety reasons → `content_filter`), cumulative `usageMetadata` kept last. A stream has no
//! terminator: it is complete once a candidate carried a `finishReason`. A blocked prompt
//! (`promptFeedback.blockReason`) is `content_policy`; `RetryInfo.retryDelay` becomes
//! Retry-After.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_core::config::Deployment;
use sluice_schemas::openai::{
    ChatCompletion, ChatRequest, Choice, CompletionTokensDetails, Content, Delta, Message,
    PromptTokensDetails, Role, Usage,
};
use sluice_schemas::sse::SseEvent;
use sluice_schemas::ErrorClass;

use super::accumulate::Accumulator;
use super::chunk::{role_delta, tool_call_start, ChunkMeta, Emitted, EventError};
use super::error::{class_of_status, is_context_message, ProviderError};
use super::params::bad_request;
use super::params::Params;
use super::request::{self, ResponseFormat, ToolChoice};
use super::wire::{Framing, Normalise, Wire};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateRequest {
    contents: Vec<WireContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<WireContent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTools>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    generation_config: GenerationConfig,
}

#[derive(Debug, Serialize)]
struct WireContent {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<WirePart>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<WireFunctionCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    mime_type: String,
    data: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData {
    file_uri: String,
}

#[derive(Debug, Serialize)]
struct WireFunctionCall {
    name: String,
    args: Value,
}

#[derive(Debug, Serialize)]
struct FunctionResponse {
    name: String,
    response: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTools {
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Debug, Serialize)]
struct FunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    function_calling_config: FunctionCallingConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u32,
    include_thoughts: bool,
}

/// `{api_base}/v1beta/models/{model}:{method}` (the version is added unless `api_base`
/// already ends with one).
pub fn url(d: &Deployment, stream: bool) -> String {
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    method_url(d, method)
}

/// The URL of the model's `method` (`generateContent`, `embedContent`, ...).
pub(crate) fn method_url(d: &Deployment, method: &str) -> String {
    let base = d.api_base.trim_end_matches('/');
    let versioned = base.ends_with("/v1beta") || base.ends_with("/v1");
    if versioned {
        format!("{base}/models/{}:{method}", d.model)
    } else {
        format!("{base}/v1beta/models/{}:{method}", d.model)
    }
}

fn build(
    http: &reqwest::Client,
    d: &Deployment,
    r: &ChatRequest,
    stream: bool,
    params: &mut Params,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let body = body(r, params)?;
    let mut req = http.post(url(d, stream)).json(&body);
    if let Some(key) = &d.api_key {
        req = req.header("x-goog-api-key", key.expose());
    }
    Ok(req)
}

/// Maps an OpenAI request to a `generateContent` body.
pub(crate) fn body(r: &ChatRequest, params: &mut Params) -> Result<GenerateRequest, ProviderError> {
    let names = request::tool_names(&r.messages);
    let mut system = Vec::new();
    let mut contents: Vec<WireContent> = Vec::new();
    for m in &r.messages {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                let text = request::text(&m.content);
                if !text.is_empty() {
                    system.push(WirePart {
                        text: Some(text),
                        ..Default::default()
                    });
                }
                continue;
            }
            Role::User => ("user", parts(&m.content)?),
            Role::Assistant => {
                let mut parts = parts(&m.content)?;
                for tc in m.tool_calls.iter().flatten() {
                    parts.push(WirePart {
                        function_call: Some(WireFunctionCall {
                            name: tc.function.name.clone(),
                            args: request::arguments(&tc.function.name, &tc.function.arguments)?,
                        }),
                        ..Default::default()
                    });
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = names.get(id).ok_or_else(|| {
                    bad_request(format!(
                        "tool message answers tool_call_id {id:?}, which no earlier assistant message made"
                    ))
                })?;
                let text = request::text(&m.content);
                // `response` must be an object: a JSON object result is sent as is.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => serde_json::json!({ "content": text }),
                };
                (
                    "user",
                    vec![WirePart {
                        function_response: Some(FunctionResponse {
                            name: name.to_string(),
                            response,
                        }),
                        ..Default::default()
                    }],
                )
            }
            Role::Function => {
                return Err(bad_request(
                    "the deprecated `function` role is not supported; use tool messages",
                ))
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role == Some(role) => last.parts.extend(parts),
            _ => contents.push(WireContent {
                role: Some(role),
                parts,
            }),
        }
    }

    let mut config = GenerationConfig {
        temperature: r.temperature,
        top_p: r.top_p,
        max_output_tokens: r.output_cap(),
        stop_sequences: request::stop_list(r),
        candidate_count: r.n.filter(|n| *n > 1),
        seed: r.seed,
        ..Default::default()
    };
    match ResponseFormat::from_request(r)? {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => config.response_mime_type = Some("application/json"),
        Some(ResponseFormat::JsonSchema(schema)) => {
            config.response_mime_type = Some("application/json");
            config.response_schema = Some(clean_schema(schema));
        }
    }
    let thinking_budget = match (&r.reasoning_effort, r.extra.get("thinking")) {
        (Some(effort), _) => match request::reasoning_budget(effort) {
            Some(b) => Some(b),
            None => {
                params.unsupported_value("reasoning_effort", effort)?;
                None
            }
        },
        // Anthropic-style `thinking`, which LiteLLM also accepts for Gemini.
        (None, Some(t)) => Some(match t.get("type").and_then(Value::as_str) {
            Some("disabled") => 0,
            _ => t
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(1024)
                .min(u32::MAX as u64) as u32,
        }),
        (None, None) => None,
    };
    config.thinking_config = thinking_budget.map(|b| ThinkingConfig {
        thinking_budget: b,
        include_thoughts: b > 0,
    });
    for (key, value) in &r.extra {
        match key.as_str() {
            "thinking" => {}
            "top_k" => config.top_k = Some(value.clone()),
            other => params.unsupported(other)?,
        }
    }
    if r.user.is_some() {
        params.unsupported("user")?;
    }
    if r.parallel_tool_calls == Some(false) {
        params.unsupported_value("parallel_tool_calls", "false")?;
    }

    let declarations: Vec<FunctionDeclaration> = r
        .tools
        .iter()
        .flatten()
        .map(|t| FunctionDeclaration {
            name: t.function.name.clone(),
            description: t.function.description.clone(),
            parameters: t.function.parameters.clone().map(clean_schema),
        })
        .collect();
    let tool_config = ToolChoice::from_request(r)?.map(|c| {
        let (mode, allowed) = match c {
            ToolChoice::Auto => ("AUTO", None),
            ToolChoice::None => ("NONE", None),
            ToolChoice::Required => ("ANY", None),
            ToolChoice::Function(name) => ("ANY", Some(vec![name])),
        };
        ToolConfig {
            function_calling_config: FunctionCallingConfig {
                mode,
                allowed_function_names: allowed,
            },
        }
    });
    Ok(GenerateRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(WireContent {
            role: None,
            parts: system,
        }),
        tools: if declarations.is_empty() {
            Vec::new()
        } else {
            vec![WireTools {
                function_declarations: declarations,
            }]
        },
        tool_config,
        generation_config: config,
    })
}

fn parts(content: &Option<Content>) -> Result<Vec<WirePart>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![WirePart {
            text: Some(t.clone()),
            ..Default::default()
        }]),
        Some(Content::Parts(ps)) => ps
            .iter()
            .map(|p| match p.kind.as_str() {
                "text" => Ok(WirePart {
                    text: Some(p.text.clone().unwrap_or_default()),
                    ..Default::default()
                }),
                "image_url" => {
                    let url = request::image_url(p)
                        .ok_or_else(|| bad_request("an image_url part without a url"))?;
                    Ok(match request::data_url(url) {
                        Some((mime, data)) => WirePart {
                            inline_data: Some(Blob {
                                mime_type: mime.to_string(),
                                data: data.to_string(),
                            }),
                            ..Default::default()
                        },
                        None => WirePart {
                            file_data: Some(FileData {
                                file_uri: url.to_string(),
                            }),
                            ..Default::default()
                        },
                    })
                }
                other => Err(bad_request(format!(
                    "gemini cannot take content parts of type {other:?}"
                ))),
            })
            .collect(),
    }
}

/// Gemini's schema dialect (an OpenAPI subset) rejects some JSON Schema keywords.
fn clean_schema(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "$schema" | "additionalProperties" | "strict")
                })
                .map(|(k, v)| (k, clean_schema(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(clean_schema).collect()),
        other => other,
    }
}

// ---- responses ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<CandidateContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<ResponsePart>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponsePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<ResponseFunctionCall>,
}

#[derive(Debug, Deserialize)]
struct ResponseFunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    block_reason_message: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
}

impl UsageMetadata {
    /// Thinking tokens are not in `candidatesTokenCount`; OpenAI counts them as completion.
    fn to_openai(self) -> Usage {
        let mut u = Usage::new(
            self.prompt_token_count,
            self.candidates_token_count + self.thoughts_token_count,
        );
        if self.cached_content_token_count > 0 {
            u.prompt_tokens_details = Some(PromptTokensDetails {
                cached_tokens: Some(self.cached_content_token_count),
                cache_creation_tokens: None,
            });
        }
        if self.thoughts_token_count > 0 {
            u.completion_tokens_details = Some(CompletionTokensDetails {
                reasoning_tokens: Some(self.thoughts_token_count),
            });
        }
        u
    }
}

/// Gemini's `finishReason` as an OpenAI `finish_reason`; `STOP` after a function call is
/// `tool_calls` (Gemini has no reason of its own for it).
fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "STOP" if called_tools => "tool_calls",
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ => "stop",
    }
}

fn blocked(feedback: &Option<PromptFeedback>) -> Option<ProviderError> {
    let f = feedback.as_ref()?;
    let reason = f.block_reason.as_deref()?;
    let detail = f.block_reason_message.as_deref().unwrap_or("");
    Some(ProviderError::new(
        ErrorClass::ContentPolicy,
        format!("gemini blocked the prompt ({reason}) {detail}")
            .trim_end()
            .to_string(),
    ))
}

/// Folds one response (whole, or one SSE event) into chunks. `next_tool` numbers tool calls
/// across the stream; `called` remembers that one was made.
fn normalise(
    r: WireResponse,
    meta: &mut ChunkMeta,
    first: &mut bool,
    next_tool: &mut u32,
    called: &mut bool,
    out: &mut Vec<Emitted>,
) -> Result<(Option<Usage>, bool), ProviderError> {
    if let Some(e) = r.error {
        return Err(classify_body(e.code, e));
    }
    if let Some(e) = blocked(&r.prompt_feedback) {
        return Err(e);
    }
    if let Some(id) = r.response_id.filter(|s| !s.is_empty()) {
        meta.id = id;
    }
    if let Some(m) = r.model_version.filter(|s| !s.is_empty()) {
        meta.model = m;
    }
    let mut finished = false;
    for (i, cand) in r.candidates.into_iter().enumerate() {
        let index = cand.index.unwrap_or(i as u32);
        let mut delta = if std::mem::take(first) {
            role_delta()
        } else {
            Delta::default()
        };
        let mut any = delta.role.is_some();
        for p in cand.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(fc) = p.function_call {
                let k = *next_tool;
                *next_tool += 1;
                *called = true;
                let args = fc.args.unwrap_or_else(|| Value::Object(Default::default()));
                let id = fc.id.unwrap_or_else(|| format!("call_{}_{k}", meta.id));
                let call = tool_call_start(k, id, fc.name, args.to_string());
                let calls = delta.tool_calls.get_or_insert_with(Vec::new);
                calls.extend(call.tool_calls.into_iter().flatten());
                any = true;
            } else if let Some(t) = p.text {
                let slot = if p.thought == Some(true) {
                    &mut delta.reasoning_content
                } else {
                    &mut delta.content
                };
                slot.get_or_insert_with(String::new).push_str(&t);
                any = true;
            }
        }
        let finish = cand
            .finish_reason
            .filter(|f| !f.is_empty() && f != "FINISH_REASON_UNSPECIFIED")
            .map(|f| finish_reason(&f, *called).to_string());
        finished |= finish.is_some();
        if any || finish.is_some() {
            meta.emit(out, index, delta, finish);
        }
    }
    Ok((r.usage_metadata.map(UsageMetadata::to_openai), finished))
}

fn parse_completion(bytes: &[u8], model: &str) -> Result<ChatCompletion, ProviderError> {
    let r: WireResponse = serde_json::from_slice(bytes).map_err(|_| {
        ProviderError::new(ErrorClass::Server, "gemini returned a malformed response")
    })?;
    let mut meta = ChunkMeta::new(model);
    let mut out = Vec::new();
    let (mut first, mut next_tool, mut called) = (true, 0, false);
    let (usage, _) = normalise(
        r,
        &mut meta,
        &mut first,
        &mut next_tool,
        &mut called,
        &mut out,
    )?;
    let mut acc = Accumulator::new();
    for e in &out {
        acc.push(&e.chunk);
    }
    let mut c = acc.into_completion()?;
    c.id = meta.id;
    c.model = meta.model;
    c.created = meta.created;
    c.usage = usage;
    if c.choices.is_empty() {
        c.choices.push(Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content: Some(Content::Text(String::new())),
                name: None,
                tool_calls: None,
                tool_call_id: None,
                refusal: None,
                reasoning_content: None,
                thinking_blocks: None,
            },
            finish_reason: Some("stop".into()),
        });
    }
    Ok(c)
}

/// Normalises one `streamGenerateContent?alt=sse` stream.
#[derive(Debug)]
pub(crate) struct StreamState {
    meta: ChunkMeta,
    first: bool,
    next_tool: u32,
    called: bool,
    usage: Option<Usage>,
    finished: bool,
}

impl StreamState {
    pub fn new(model: &str) -> Self {
        StreamState {
            meta: ChunkMeta::new(model),
            first: true,
            next_tool: 0,
            called: false,
            usage: None,
            finished: false,
        }
    }
}

impl Normalise for StreamState {
    fn complete(&self) -> bool {
        self.finished
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<Emitted>) -> Result<(), EventError> {
        let r: WireResponse = serde_json::from_str(&ev.data).map_err(|_| EventError::Malformed)?;
        let (usage, finished) = normalise(
            r,
            &mut self.meta,
            &mut self.first,
            &mut self.next_tool,
            &mut self.called,
            out,
        )?;
        if usage.is_some() {
            self.usage = usage; // cumulative: the last one counts
        }
        self.finished |= finished;
        Ok(())
    }

    /// The stream closed after its finish: the usage chunk OpenAI sends last.
    fn end(&mut self, out: &mut Vec<Emitted>) {
        if let Some(u) = self.usage.take() {
            out.push(Emitted {
                chunk: self.meta.usage_chunk(u),
                raw: None,
            });
        }
    }

    fn terminator(&self) -> &'static str {
        "a finishReason"
    }

    fn explicit_terminator(&self) -> bool {
        false
    }
}

// ---- errors ----

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// Classifies a non-2xx response.
fn classify(status: u16, body: &str) -> ProviderError {
    let error = serde_json::from_str::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| ErrorBody {
            message: body.to_string(),
            ..Default::default()
        });
    classify_body(Some(status), error)
}

fn classify_body(status: Option<u16>, e: ErrorBody) -> ProviderError {
    let reason = |r: &str| {
        e.details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some(r))
    };
    let lower = e.message.to_ascii_lowercase();
    let status_code = status.or(e.code);
    let class = if reason("API_KEY_INVALID") || lower.contains("api key not valid") {
        ErrorClass::Auth
    } else if is_context_message(&lower) {
        ErrorClass::ContextWindow
    } else {
        // Google's status name says more than the HTTP code (a 400 can be
        // FAILED_PRECONDITION: billing); the shared table decides the rest.
        match e.status.as_str() {
            "FAILED_PRECONDITION" | "PERMISSION_DENIED" | "UNAUTHENTICATED" => ErrorClass::Auth,
            "RESOURCE_EXHAUSTED" => ErrorClass::RateLimit,
            "NOT_FOUND" => ErrorClass::NotFound,
            "UNAVAILABLE" => ErrorClass::Overloaded,
            "DEADLINE_EXCEEDED" => ErrorClass::Timeout,
            "CANCELLED" | "INTERNAL" => ErrorClass::Server,
            _ => class_of_status(status_code),
        }
    };
    let retry = retry_delay(&e.details).or_else(|| retry_in_message(&e.message));
    let message = if e.message.is_empty() {
        format!("HTTP {}", status_code.unwrap_or(500))
    } else {
        e.message
    };
    let mut err = ProviderError::new(class, message);
    err.status = status;
    err.retry_after = retry;
    err
}

/// `RetryInfo.retryDelay` (a protobuf duration such as `"47s"` or `"1.5s"`).
fn retry_delay(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(|s| s.trim().strip_suffix('s')?.parse::<f64>().ok())
        .and_then(super::ratelimit::provider_wait)
}

/// "… Please retry in 47.43s."
fn retry_in_message(message: &str) -> Option<Duration> {
    let rest = &message[message.find("retry in ")? + "retry in ".len()..];
    let end = rest.find('s')?;
    super::ratelimit::provider_wait(rest[..end].parse::<f64>().ok()?)
}

/// Google Gemini (`generateContent`).
pub(crate) struct Gemini;

impl Wire for Gemini {
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Deployment,
        request: &ChatRequest,
        stream: bool,
        params: &mut Params,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        build(http, d, request, stream, params)
    }

    fn completion(&self, bytes: &[u8], model: &str) -> Result<ChatCompletion, ProviderError> {
        parse_completion(bytes, model)
    }

    fn stream(&self, model: &str) -> (Framing, Box<dyn Normalise>) {
        (Framing::Sse, Box::new(StreamState::new(model)))
    }

    fn classify(&self, _provider: &str, status: u16, body: &str) -> ProviderError {
        classify(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::StreamDecoder;
    use super::*;

    fn decode(input: &str) -> (ChatCompletion, Result<(), ProviderError>) {
        let mut d = StreamDecoder::for_wire(&Gemini, "gemini-2.5-flash");
        let mut out = Vec::new();
        let mut r = Ok(());
        for piece in input.as_bytes().chunks(11) {
            r = d.feed(piece, &mut out);
            if r.is_err() {
                break;
            }
        }
        if r.is_ok() {
            r = d.finish(&mut out);
        }
        let mut acc = Accumulator::new();
        for e in &out {
            acc.push(&e.chunk);
        }
        (acc.finish(), r)
    }

    /// A stream as Gemini sends it, in CRLF framing, with a thought part.
    #[test]
    fn fixture_stream_with_thoughts_and_cumulative_usage() {
        let body = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Plan.\",\"thought\":true},{\"text\":\"Okay, \"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":49,\"totalTokenCount\":2095,\"thoughtsTokenCount\":2042},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"IZI2\"}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"done.\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":97,\"totalTokenCount\":2143,\"thoughtsTokenCount\":2042},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"IZI2\"}\r\n\r\n";
        let (c, r) = decode(body);
        r.unwrap();
        assert_eq!(c.id, "IZI2");
        let m = &c.choices[0].message;
        assert!(matches!(&m.content, Some(Content::Text(t)) if t == "Okay, done."));
        assert_eq!(m.reasoning_content.as_deref(), Some("Plan."));
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        let u = c.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (4, 97 + 2042));
        assert_eq!(u.reasoning_tokens(), 2042);
    }

    #[test]
    fn function_call_response_becomes_tool_calls() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"getWeather","args":{"location":"Tokyo"}},"thoughtSignature":"Cik"}]},"finishReason":"STOP","index":0,"finishMessage":"Model generated function call(s)."}],"usageMetadata":{"promptTokenCount":83,"candidatesTokenCount":14,"totalTokenCount":201,"thoughtsTokenCount":104,"cachedContentTokenCount":0},"modelVersion":"gemini-2.5-flash","responseId":"qpc2a"}"#;
        let c = parse_completion(body, "g").unwrap();
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let tc = &c.choices[0].message.tool_calls.as_ref().unwrap()[0];
        assert_eq!(tc.function.name, "getWeather");
        assert_eq!(tc.function.arguments, r#"{"location":"Tokyo"}"#);
        assert!(c.choices[0].message.content.is_none());
        assert_eq!(c.usage.unwrap().total_tokens, 201);
    }

    #[test]
    fn blocked_prompt_and_safety_finish_are_content_policy() {
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":5}}"#;
        assert_eq!(
            parse_completion(blocked, "g").unwrap_err().class,
            ErrorClass::ContentPolicy
        );
        let safety = br#"{"candidates":[{"finishReason":"SAFETY","index":0}]}"#;
        let c = parse_completion(safety, "g").unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
    }

    #[test]
    fn stream_cut_before_finish_is_truncated_and_error_event_is_classified() {
        let head = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}]}\n\n";
        let (_, r) = decode(head);
        assert_eq!(r.unwrap_err().class, ErrorClass::TruncatedStream);
        let err = format!("{head}data: {{\"error\":{{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}}}\n\n");
        let (_, r) = decode(&err);
        assert_eq!(r.unwrap_err().class, ErrorClass::Overloaded);
    }

    #[test]
    fn errors_classified_with_retry_info() {
        let rl = r#"{"error":{"code":429,"message":"You exceeded your current quota. Please retry in 47.43s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}"#;
        let e = classify(429, rl);
        assert_eq!(e.class, ErrorClass::RateLimit);
        assert_eq!(e.retry_after, Some(Duration::from_secs(47)));
        let no_info = r#"{"error":{"code":429,"message":"Quota exceeded. Please retry in 2.5s.","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify(429, no_info).retry_after,
            Some(Duration::from_millis(2500))
        );
        let key = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(classify(400, key).class, ErrorClass::Auth);
        let ctx = r#"{"error":{"code":400,"message":"The input token count (3475108) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(classify(400, ctx).class, ErrorClass::ContextWindow);
        let busy = r#"{"error":{"code":503,"message":"This model is currently experiencing high demand.","status":"UNAVAILABLE"}}"#;
        assert_eq!(classify(503, busy).class, ErrorClass::Overloaded);
        assert_eq!(classify(404, "{}").class, ErrorClass::NotFound);
    }

    #[test]
    fn request_maps_roles_tools_and_generation_config() {
        let r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function",
                    "function": {"name": "getWeather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_9", "content": "{\"tempC\":21}"}
            ],
            "tools": [{"type": "function", "function": {"name": "getWeather",
                "parameters": {"type": "object", "additionalProperties": false,
                    "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "getWeather"}},
            "response_format": {"type": "json_object"},
            "temperature": 0.2, "top_p": 0.9, "seed": 3, "stop": ["END"],
            "max_tokens": 100, "reasoning_effort": "high"
        }))
        .unwrap();
        let b =
            serde_json::to_value(body(&r, &mut Params::with("gemini", false)).unwrap()).unwrap();
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], "You are terse.");
        assert_eq!(b["contents"][1]["role"], "model");
        assert_eq!(
            b["contents"][1]["parts"][0]["functionCall"]["args"]["city"],
            "Paris"
        );
        assert_eq!(
            b["contents"][2]["parts"][0]["functionResponse"]["name"],
            "getWeather"
        );
        assert_eq!(
            b["contents"][2]["parts"][0]["functionResponse"]["response"]["tempC"],
            21
        );
        let decl = &b["tools"][0]["functionDeclarations"][0];
        assert!(decl["parameters"].get("additionalProperties").is_none());
        assert_eq!(b["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
        let g = &b["generationConfig"];
        assert_eq!(g["maxOutputTokens"], 100);
        assert_eq!(g["stopSequences"][0], "END");
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(g["thinkingConfig"]["thinkingBudget"], 4096);
        assert_eq!(g["seed"], 3);
    }
}
