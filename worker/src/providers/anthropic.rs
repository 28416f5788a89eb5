//! Anthropic Messages API.
//!
//! `POST {api_base}/v1/messages`, `x-api-key` + `anthropic-version`. The request mapping
//! lifts system/developer messages to the top-level `system` (parts keep their
//! `cache_control`, as user parts do), turns content parts, tool
//! calls and tool results into content blocks (consecutive same-role turns merged, as the
//! API requires), maps `tool_choice`/`parallel_tool_calls`, `stop`, `user`, and
//! `reasoning_effort`/`thinking` to `thinking`. Responses and the named-event SSE stream
//! (`message_start` … `message_stop`, `ping`, `error`) are normalised to OpenAI chunks:
//! text, `thinking` as `reasoning_content`, `tool_use` as tool-call deltas, stop reasons
//! mapped, usage with cache reads/writes. Classification by `error.type` lives here
//! (529 and `overloaded_error` are `overloaded`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::config::Deployment;
use sluice_schemas::openai::{
    ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta, FunctionCall,
    FunctionCallDelta, Message, PromptTokensDetails, Role, ToolCall, ToolCallDelta, Usage,
};
use sluice_schemas::sse::SseEvent;
use sluice_schemas::ErrorClass;

use super::chunk::{now_secs, role_delta, tool_call_start, ChunkMeta, Emitted, EventError};
use super::error::{class_of_status, is_context_message, ProviderError};
use super::params::bad_request;
use super::params::Params;
use super::request::{self, ResponseFormat, ToolChoice};
use super::wire::{Framing, Normalise, Wire};

pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is used when the caller gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

#[derive(Debug, Serialize)]
pub(crate) struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
}

#[derive(Debug, Serialize)]
struct Metadata {
    user_id: String,
}

#[derive(Debug, Serialize)]
struct WireMessage {
    role: &'static str,
    content: Vec<Block>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
        /// Prompt caching: the caller's `cache_control` on the part, passed through.
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    Image {
        source: ImageSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
    },
    /// A signed thinking block of an earlier answer, sent back as it came.
    Thinking {
        thinking: String,
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Value,
}

#[derive(Debug, Serialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

fn build(
    http: &reqwest::Client,
    d: &Deployment,
    r: &ChatRequest,
    stream: bool,
    params: &mut Params,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let body = body(&d.model, r, stream, params)?;
    let mut req = super::request::post_chat(http, d, |d| format!("{}/v1/messages", d.api_base))
        .header("anthropic-version", API_VERSION)
        .json(&body);
    if let Some(key) = &d.api_key {
        req = req.header("x-api-key", key.expose());
    }
    Ok(req)
}

/// Maps an OpenAI request to a Messages API body.
pub(crate) fn body<'a>(
    model: &'a str,
    r: &'a ChatRequest,
    stream: bool,
    params: &mut Params,
) -> Result<MessagesRequest<'a>, ProviderError> {
    let mut system = Vec::new();
    let mut messages: Vec<WireMessage> = Vec::new();
    for m in &r.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                match &m.content {
                    // Parts stay blocks of their own, each with its `cache_control`.
                    Some(Content::Parts(parts)) => system.extend(
                        parts
                            .iter()
                            .filter(|p| p.text.as_deref().is_some_and(|t| !t.is_empty()))
                            .map(|p| Block::Text {
                                text: p.text.clone().unwrap_or_default(),
                                cache_control: cache_control(p),
                            }),
                    ),
                    _ => {
                        let text = request::text(&m.content);
                        if !text.is_empty() {
                            system.push(text_block(text));
                        }
                    }
                }
                continue;
            }
            Role::User => ("user", content_blocks(&m.content)?),
            Role::Assistant => {
                // Signed thinking comes first, as the API requires of a thinking turn.
                let mut blocks = thinking_blocks(m.thinking_blocks.as_deref());
                let text = request::text(&m.content);
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
                for tc in m.tool_calls.iter().flatten() {
                    blocks.push(Block::ToolUse {
                        id: tc.id.clone(),
                        name: tc.function.name.clone(),
                        input: request::arguments(&tc.function.name, &tc.function.arguments)?,
                    });
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = m.tool_call_id.clone().ok_or_else(|| {
                    bad_request("a tool message needs the tool_call_id it answers")
                })?;
                (
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: id,
                        content: request::text(&m.content),
                    }],
                )
            }
            Role::Function => {
                return Err(bad_request(
                    "the deprecated `function` role is not supported; use tool messages",
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }

    let mut thinking = r.extra.get("thinking").cloned();
    if let Some(effort) = &r.reasoning_effort {
        match request::reasoning_budget(effort) {
            Some(0) => thinking = Some(serde_json::json!({"type": "disabled"})),
            Some(budget) => {
                thinking = Some(serde_json::json!({"type": "enabled", "budget_tokens": budget}))
            }
            None => params.unsupported_value("reasoning_effort", effort)?,
        }
    }
    let budget = thinking
        .as_ref()
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let max_tokens = r
        .output_cap()
        .unwrap_or_else(|| DEFAULT_MAX_TOKENS.max(budget.saturating_add(DEFAULT_MAX_TOKENS)));

    let mut tool_choice = match ToolChoice::from_request(r)? {
        None => None,
        Some(ToolChoice::Auto) => Some(choice("auto", None)),
        Some(ToolChoice::None) => Some(choice("none", None)),
        Some(ToolChoice::Required) => Some(choice("any", None)),
        Some(ToolChoice::Function(name)) => Some(choice("tool", Some(name))),
    };
    if r.parallel_tool_calls == Some(false) {
        tool_choice
            .get_or_insert_with(|| choice("auto", None))
            .disable_parallel_tool_use = Some(true);
    }
    let tools = r
        .tools
        .iter()
        .flatten()
        .map(|t| WireTool {
            name: &t.function.name,
            description: t.function.description.as_deref(),
            input_schema: t
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        })
        .collect();

    match ResponseFormat::from_request(r)? {
        None | Some(ResponseFormat::Text) => {}
        Some(_) => params.unsupported("response_format")?,
    }
    if r.seed.is_some() {
        params.unsupported("seed")?;
    }
    if let Some(n) = r.n.filter(|n| *n > 1) {
        params.unsupported_value("n", &n.to_string())?;
    }
    let mut top_k = None;
    for (key, value) in &r.extra {
        match key.as_str() {
            "thinking" => {}
            "top_k" => top_k = Some(value.clone()),
            other => params.unsupported(other)?,
        }
    }
    Ok(MessagesRequest {
        model,
        max_tokens,
        messages,
        system,
        stream,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k,
        stop_sequences: request::stop_list(r),
        metadata: r.user.clone().map(|user_id| Metadata { user_id }),
        tools,
        tool_choice,
        thinking,
    })
}

fn choice(kind: &'static str, name: Option<String>) -> WireToolChoice {
    WireToolChoice {
        kind,
        name,
        disable_parallel_tool_use: None,
    }
}

/// An earlier answer's `thinking_blocks` as request blocks; anything else in the list
/// (no signature, an unknown type) is left out, since the API would refuse it.
fn thinking_blocks(blocks: Option<&[Value]>) -> Vec<Block> {
    let field = |b: &Value, k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
    blocks
        .into_iter()
        .flatten()
        .filter_map(|b| match b.get("type").and_then(Value::as_str) {
            Some("thinking") => Some(Block::Thinking {
                thinking: field(b, "thinking").unwrap_or_default(),
                signature: field(b, "signature").filter(|s| !s.is_empty())?,
            }),
            Some("redacted_thinking") => Some(Block::RedactedThinking {
                data: field(b, "data")?,
            }),
            _ => None,
        })
        .collect()
}

fn text_block(text: String) -> Block {
    Block::Text {
        text,
        cache_control: None,
    }
}

/// A content part's `cache_control` (`{"type": "ephemeral"}`, optionally with `ttl`), as
/// the caller wrote it.
fn cache_control(part: &ContentPart) -> Option<Value> {
    part.extra
        .get("cache_control")
        .filter(|v| v.is_object())
        .cloned()
}

fn content_blocks(content: &Option<Content>) -> Result<Vec<Block>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![text_block(t.clone())]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p.kind.as_str() {
                "text" => Ok(Block::Text {
                    text: p.text.clone().unwrap_or_default(),
                    cache_control: cache_control(p),
                }),
                "image_url" => {
                    let url = request::image_url(p)
                        .ok_or_else(|| bad_request("an image_url part without a url"))?;
                    Ok(Block::Image {
                        source: match request::data_url(url) {
                            Some((mime, data)) => ImageSource::Base64 {
                                media_type: mime.to_string(),
                                data: data.to_string(),
                            },
                            None => ImageSource::Url {
                                url: url.to_string(),
                            },
                        },
                        cache_control: cache_control(p),
                    })
                }
                other => Err(bad_request(format!(
                    "anthropic cannot take content parts of type {other:?}"
                ))),
            })
            .collect(),
    }
}

// ---- responses ----

#[derive(Debug, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<ResponseBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Anthropic's usage: `input_tokens` excludes cache reads and writes.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Later counts (cumulative `message_delta` usage) replace earlier ones.
    fn merge(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn to_openai(self) -> Option<Usage> {
        if self.input_tokens.is_none() && self.output_tokens.is_none() {
            return None;
        }
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0) + read + created;
        let completion = self.output_tokens.unwrap_or(0);
        let mut u = Usage::new(prompt, completion);
        // Thinking tokens are inside `output_tokens`; Anthropic does not report them apart.
        if read > 0 || created > 0 {
            u.prompt_tokens_details = Some(PromptTokensDetails {
                cached_tokens: Some(read),
                cache_creation_tokens: Some(created),
            });
        }
        Some(u)
    }
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    }
}

fn parse_completion(bytes: &[u8]) -> Result<ChatCompletion, ProviderError> {
    if let Some(e) = payload_error(bytes) {
        return Err(e);
    }
    let r: WireResponse = serde_json::from_slice(bytes).map_err(|_| {
        ProviderError::new(ErrorClass::Server, "anthropic returned a malformed message")
    })?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut signed = Vec::new();
    let mut calls = Vec::new();
    for b in r.content {
        match b {
            ResponseBlock::Text { text: t } => text.push_str(&t),
            ResponseBlock::Thinking {
                thinking,
                signature,
            } => {
                reasoning.push_str(&thinking);
                if let Some(signature) = signature.filter(|s| !s.is_empty()) {
                    signed.push(thinking_block(thinking, signature));
                }
            }
            ResponseBlock::RedactedThinking { data } => signed.push(redacted_block(data)),
            ResponseBlock::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ResponseBlock::Other => {}
        }
    }
    let usage = r.usage.and_then(WireUsage::to_openai);
    let has_calls = !calls.is_empty();
    Ok(ChatCompletion {
        id: r.id,
        object: "chat.completion".into(),
        created: now_secs(),
        model: r.model,
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content: (!(text.is_empty() && has_calls)).then_some(Content::Text(text)),
                name: None,
                tool_calls: has_calls.then_some(calls),
                tool_call_id: None,
                refusal: None,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                thinking_blocks: (!signed.is_empty()).then_some(signed),
            },
            finish_reason: Some(
                finish_reason(r.stop_reason.as_deref().unwrap_or("end_turn")).into(),
            ),
        }],
        usage,
        system_fingerprint: None,
    })
}

/// A signed thinking block in the shape answers carry it (`thinking_blocks`).
fn thinking_block(thinking: String, signature: String) -> Value {
    serde_json::json!({"type": "thinking", "thinking": thinking, "signature": signature})
}

fn redacted_block(data: String) -> Value {
    serde_json::json!({"type": "redacted_thinking", "data": data})
}

// ---- streaming ----

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    ToolUse {
        id: String,
        name: String,
    },
    Text {
        #[serde(default)]
        text: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// Normalises one Messages API stream.
#[derive(Debug)]
pub(crate) struct StreamState {
    meta: ChunkMeta,
    usage: WireUsage,
    /// Content-block index → OpenAI tool-call index.
    tools: HashMap<u32, u32>,
    /// The text of the thinking block being streamed, for its signed copy.
    thinking: String,
    done: bool,
}

impl StreamState {
    pub fn new(model: &str) -> Self {
        StreamState {
            meta: ChunkMeta::new(model),
            usage: WireUsage::default(),
            tools: HashMap::new(),
            thinking: String::new(),
            done: false,
        }
    }
}

impl Normalise for StreamState {
    fn complete(&self) -> bool {
        self.done
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<Emitted>) -> Result<(), EventError> {
        if self.done {
            return Ok(());
        }
        let event: StreamEvent =
            serde_json::from_str(&ev.data).map_err(|_| EventError::Malformed)?;
        match event {
            StreamEvent::MessageStart { message } => {
                if !message.id.is_empty() {
                    self.meta.id = message.id;
                }
                if !message.model.is_empty() {
                    self.meta.model = message.model;
                }
                if let Some(u) = message.usage {
                    self.usage.merge(u);
                }
                self.meta.emit(out, 0, role_delta(), None);
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                StartBlock::ToolUse { id, name } => {
                    let k = self.tools.len() as u32;
                    self.tools.insert(index, k);
                    let delta = tool_call_start(k, id, name, String::new());
                    self.meta.emit(out, 0, delta, None);
                }
                StartBlock::Text { text } if !text.is_empty() => {
                    self.meta.emit(out, 0, content(text), None);
                }
                StartBlock::RedactedThinking { data } => {
                    let delta = Delta {
                        thinking_blocks: Some(vec![redacted_block(data)]),
                        ..Delta::default()
                    };
                    self.meta.emit(out, 0, delta, None);
                }
                _ => {}
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => self.meta.emit(out, 0, content(text), None),
                BlockDelta::ThinkingDelta { thinking } => {
                    self.thinking.push_str(&thinking);
                    let delta = Delta {
                        reasoning_content: Some(thinking),
                        ..Delta::default()
                    };
                    self.meta.emit(out, 0, delta, None);
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    let Some(&k) = self.tools.get(&index) else {
                        return Err(EventError::Malformed);
                    };
                    if !partial_json.is_empty() {
                        let delta = Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: k,
                                id: None,
                                kind: None,
                                function: Some(FunctionCallDelta {
                                    name: None,
                                    arguments: Some(partial_json),
                                }),
                            }]),
                            ..Delta::default()
                        };
                        self.meta.emit(out, 0, delta, None);
                    }
                }
                BlockDelta::SignatureDelta { signature } => {
                    // The block is complete once signed: its whole signed copy goes out.
                    let thinking = std::mem::take(&mut self.thinking);
                    let delta = Delta {
                        thinking_blocks: Some(vec![thinking_block(thinking, signature)]),
                        ..Delta::default()
                    };
                    self.meta.emit(out, 0, delta, None);
                }
                BlockDelta::Other => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.merge(u);
                }
                if let Some(stop) = delta.stop_reason {
                    let finish = finish_reason(&stop).to_string();
                    self.meta.emit(out, 0, Delta::default(), Some(finish));
                }
            }
            StreamEvent::MessageStop {} => {
                self.done = true;
                if let Some(u) = self.usage.to_openai() {
                    out.push(Emitted {
                        chunk: self.meta.usage_chunk(u),
                        raw: None,
                    });
                }
            }
            StreamEvent::Error { error } => return Err(classify_body(None, error).into()),
            StreamEvent::ContentBlockStop {} | StreamEvent::Ping {} | StreamEvent::Unknown => {}
        }
        Ok(())
    }

    fn terminator(&self) -> &'static str {
        "message_stop"
    }
}

fn content(text: String) -> Delta {
    Delta {
        content: Some(text),
        ..Delta::default()
    }
}

// ---- errors ----

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

fn payload_error(bytes: &[u8]) -> Option<ProviderError> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
        error: ErrorBody,
    }
    let t: Typed = serde_json::from_slice(bytes).ok()?;
    (t.kind == "error").then(|| classify_body(None, t.error))
}

/// Classifies a non-2xx Messages API response.
fn classify(status: u16, body: &str) -> ProviderError {
    let error = serde_json::from_str::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| ErrorBody {
            kind: String::new(),
            message: body.to_string(),
        });
    classify_body(Some(status), error)
}

/// Branches on `error.type` first (the API says so: 529 and an overload sent as 429 are
/// both `overloaded_error`), then on the status.
fn classify_body(status: Option<u16>, e: ErrorBody) -> ProviderError {
    let lower = e.message.to_ascii_lowercase();
    let class = match e.kind.as_str() {
        "overloaded_error" => ErrorClass::Overloaded,
        "rate_limit_error" => ErrorClass::RateLimit,
        "authentication_error" | "permission_error" | "billing_error" => ErrorClass::Auth,
        "not_found_error" => ErrorClass::NotFound,
        "timeout_error" => ErrorClass::Timeout,
        "api_error" => ErrorClass::Server,
        _ if is_context_message(&lower) => ErrorClass::ContextWindow,
        _ if lower.contains("content filtering policy") => ErrorClass::ContentPolicy,
        "request_too_large" => ErrorClass::BadRequest,
        _ => class_of_status(status),
    };
    let message = if e.message.is_empty() {
        match status {
            Some(s) => format!("HTTP {s}"),
            None => "error event in the stream".to_string(),
        }
    } else {
        e.message
    };
    let mut err = ProviderError::new(class, message);
    err.status = status;
    err
}

/// Anthropic Messages.
pub(crate) struct Anthropic;

impl Wire for Anthropic {
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

    fn completion(&self, bytes: &[u8], _model: &str) -> Result<ChatCompletion, ProviderError> {
        parse_completion(bytes)
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
    use super::super::accumulate::Accumulator;
    use super::super::decode::StreamDecoder;
    use super::*;
    use sluice_schemas::openai::{FunctionDef, Tool};

    fn decode(input: &str) -> (ChatCompletion, Result<(), ProviderError>) {
        let mut d = StreamDecoder::for_wire(&Anthropic, "claude");
        let mut out = Vec::new();
        let mut r = Ok(());
        for piece in input.as_bytes().chunks(5) {
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
            assert!(e.raw.is_none());
            acc.push(&e.chunk);
        }
        (acc.finish(), r)
    }

    /// A tool-use stream as Anthropic sends it, CRLF-framed, with a ping in the middle.
    #[test]
    fn fixture_tool_use_stream_with_ping_and_crlf() {
        let body = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"m\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":849,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":10}}}\r\n\r\n\
event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Need weather.\"}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\r\n\r\n\
event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n\
event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"json\",\"input\":{}}}\r\n\r\n\
event: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Par\"}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\r\n\r\n\
event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":1}\r\n\r\n\
event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":47}}\r\n\r\n\
event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
        let (c, r) = decode(body);
        r.unwrap();
        assert_eq!(c.id, "msg_1");
        let ch = &c.choices[0];
        assert_eq!(ch.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            ch.message.reasoning_content.as_deref(),
            Some("Need weather.")
        );
        assert_eq!(
            ch.message.thinking_blocks,
            Some(vec![
                serde_json::json!({"type": "thinking", "thinking": "Need weather.", "signature": "sig"})
            ]),
            "the signed block, whole, once its signature arrived"
        );
        let tc = &ch.message.tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            (tc.id.as_str(), tc.function.name.as_str()),
            ("toolu_1", "json")
        );
        assert_eq!(tc.function.arguments, r#"{"city": "Paris"}"#);
        let u = c.usage.unwrap();
        assert_eq!(u.prompt_tokens, 949, "input + cache read + cache write");
        assert_eq!(u.cached_tokens(), 100);
        assert_eq!(u.completion_tokens, 47, "message_delta usage is cumulative");
    }

    #[test]
    fn error_event_mid_stream_is_overloaded_and_missing_stop_is_truncated() {
        let head = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        let err = format!("{head}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n");
        let (_, r) = decode(&err);
        assert_eq!(r.unwrap_err().class, ErrorClass::Overloaded);
        let (c, r) = decode(head);
        assert_eq!(r.unwrap_err().class, ErrorClass::TruncatedStream);
        assert!(matches!(&c.choices[0].message.content, Some(Content::Text(t)) if t == "Hi"));
    }

    #[test]
    fn refusal_stop_reason_maps_to_content_filter() {
        let body = br#"{"id":"msg_2","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":"refusal","stop_details":{"type":"refusal","category":"cyber"},"usage":{"input_tokens":5,"output_tokens":0}}"#;
        let c = parse_completion(body).unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
    }

    #[test]
    fn errors_are_classified_by_type_then_status() {
        let c = |s, b: &str| classify(s, b).class;
        assert_eq!(
            c(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#
            ),
            ErrorClass::Overloaded
        );
        assert_eq!(
            c(
                429,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            ErrorClass::Overloaded
        );
        assert_eq!(
            c(
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#
            ),
            ErrorClass::RateLimit
        );
        assert_eq!(
            c(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 205351 tokens > 200000 maximum"}}"#
            ),
            ErrorClass::ContextWindow
        );
        assert_eq!(
            c(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000, decrease input length or `max_tokens` and try again"}}"#
            ),
            ErrorClass::ContextWindow
        );
        assert_eq!(
            c(
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
            ),
            ErrorClass::Auth
        );
        assert_eq!(c(529, "<html>"), ErrorClass::Overloaded);
    }

    #[test]
    fn request_lifts_system_merges_tool_results_and_maps_choices() {
        let r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Rome\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "25C"}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "user": "u-1",
            "reasoning_effort": "low",
            "max_completion_tokens": 3000
        }))
        .unwrap();
        let mut p = Params::with("anthropic", false);
        let b = serde_json::to_value(body("claude", &r, true, &mut p).unwrap()).unwrap();
        assert_eq!(b["system"][0]["text"], "Be terse.");
        assert_eq!(b["messages"].as_array().unwrap().len(), 3);
        assert_eq!(b["messages"][0]["content"][1]["source"]["type"], "base64");
        assert_eq!(b["messages"][1]["content"][1]["input"]["city"], "Rome");
        assert_eq!(b["messages"][2]["content"][1]["tool_use_id"], "call_2");
        assert_eq!(b["tool_choice"]["type"], "any");
        assert_eq!(b["tool_choice"]["disable_parallel_tool_use"], true);
        assert_eq!(b["stop_sequences"][0], "END");
        assert_eq!(b["metadata"]["user_id"], "u-1");
        assert_eq!(b["thinking"]["budget_tokens"], 1024);
        assert_eq!(b["max_tokens"], 3000);
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object");
    }

    #[test]
    fn unsupported_params_fail_or_are_dropped() {
        let mut r = ChatRequest {
            model: "x".into(),
            messages: vec![Message::user("hi")],
            seed: Some(7),
            tools: Some(vec![Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: "f".into(),
                    description: None,
                    parameters: None,
                    strict: None,
                },
            }]),
            ..Default::default()
        };
        r.extra.insert("logprobs".into(), Value::Bool(true));
        let err = body("c", &r, false, &mut Params::with("anthropic", false)).unwrap_err();
        assert_eq!(err.class, ErrorClass::BadRequest);
        assert!(err.message.contains("`seed`"), "{}", err.message);
        let mut p = Params::with("anthropic", true);
        let b = serde_json::to_value(body("c", &r, false, &mut p).unwrap()).unwrap();
        assert!(b.get("seed").is_none());
        assert_eq!(p.dropped(), ["seed", "logprobs"]);
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn cache_control_on_parts_is_passed_through_in_system_and_user_blocks() {
        let r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "c",
            "messages": [
                {"role": "system", "content": [
                    {"type": "text", "text": "You are terse."},
                    {"type": "text", "text": "A long manual ...", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Question", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
                ]}
            ]
        }))
        .unwrap();
        let body = serde_json::to_value(
            body("c", &r, false, &mut Params::with("anthropic", false)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            body["system"][0],
            serde_json::json!({"type": "text", "text": "You are terse."})
        );
        assert_eq!(
            body["system"][1]["cache_control"],
            serde_json::json!({"type": "ephemeral"})
        );
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"],
            serde_json::json!({"type": "ephemeral", "ttl": "1h"})
        );
    }
}
