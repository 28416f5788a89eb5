//! Ollama's native chat API, for the `ollama/` and
//! `ollama_chat/` prefixes.
//!
//! `POST {api_base}/api/chat`, no auth locally (a configured key is sent as a bearer token
//! for Ollama cloud). The request mapping flattens content to text plus base64 `images`,
//! sends tool calls with object arguments and tool results with `tool_name`, maps sampling,
//! `stop`, `seed` and the output cap into `options`, `response_format` into `format` and
//! `reasoning_effort` into `think`. Responses and the NDJSON stream (one object a line, the
//! last with `done:true` and the counters) are normalised to OpenAI chunks: `thinking` as
//! `reasoning_content`, whole tool calls (given ids, which Ollama omits), `done_reason`
//! mapped, usage from `prompt_eval_count`/`eval_count`. A stream without its `done:true`
//! line is truncated; an `{"error":…}` line is an error after the 200.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::config::Deployment;
use sluice_schemas::openai::{ChatCompletion, ChatRequest, Content, Delta, Role, Tool, Usage};
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
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Value>,
    #[serde(skip_serializing_if = "Options::is_empty")]
    options: Options,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<Value>,
}

#[derive(Debug, Serialize)]
struct WireMessage {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireToolCall {
    function: WireFunction,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Debug, Default, Serialize)]
struct Options {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_ctx: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<Vec<String>>,
}

impl Options {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.seed.is_none()
            && self.num_predict.is_none()
            && self.num_ctx.is_none()
            && self.stop.is_none()
    }
}

fn build(
    http: &reqwest::Client,
    d: &Deployment,
    r: &ChatRequest,
    stream: bool,
    params: &mut Params,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let body = body(&d.model, r, stream, params)?;
    let mut req =
        super::request::post_chat(http, d, |d| format!("{}/api/chat", d.api_base)).json(&body);
    if let Some(key) = &d.api_key {
        req = req.bearer_auth(key.expose());
    }
    Ok(req)
}

/// Maps an OpenAI request to an `/api/chat` body.
pub(crate) fn body<'a>(
    model: &'a str,
    r: &'a ChatRequest,
    stream: bool,
    params: &mut Params,
) -> Result<WireRequest<'a>, ProviderError> {
    let names = request::tool_names(&r.messages);
    let mut messages = Vec::with_capacity(r.messages.len());
    for m in &r.messages {
        let role = match m.role {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => {
                return Err(bad_request(
                    "the deprecated `function` role is not supported; use tool messages",
                ))
            }
        };
        let mut images = Vec::new();
        if let Some(Content::Parts(parts)) = &m.content {
            for p in parts {
                match p.kind.as_str() {
                    "text" => {}
                    "image_url" => {
                        let url = request::image_url(p).unwrap_or_default();
                        let (_, data) = request::data_url(url).ok_or_else(|| {
                            bad_request("ollama takes images only as base64 data: URLs")
                        })?;
                        images.push(data.to_string());
                    }
                    other => {
                        return Err(bad_request(format!(
                            "ollama cannot take content parts of type {other:?}"
                        )))
                    }
                }
            }
        }
        let tool_calls = m
            .tool_calls
            .iter()
            .flatten()
            .map(|tc| {
                Ok(WireToolCall {
                    function: WireFunction {
                        name: tc.function.name.clone(),
                        arguments: request::arguments(&tc.function.name, &tc.function.arguments)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, ProviderError>>()?;
        let tool_name = match m.role {
            Role::Tool => m
                .tool_call_id
                .as_deref()
                .and_then(|id| names.get(id))
                .map(|n| n.to_string()),
            _ => None,
        };
        messages.push(WireMessage {
            role,
            content: request::text(&m.content),
            images,
            tool_calls,
            tool_name,
        });
    }

    let mut options = Options {
        temperature: r.temperature,
        top_p: r.top_p,
        seed: r.seed,
        num_predict: r.output_cap(),
        stop: request::stop_list(r),
        ..Default::default()
    };
    let format = match ResponseFormat::from_request(r)? {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(Value::String("json".into())),
        Some(ResponseFormat::JsonSchema(schema)) => Some(schema),
    };
    let mut think = None;
    if let Some(effort) = &r.reasoning_effort {
        think = Some(match effort.as_str() {
            "none" => Value::Bool(false),
            "low" | "medium" | "high" => Value::String(effort.clone()),
            "minimal" => Value::String("low".into()),
            other => {
                params.unsupported_value("reasoning_effort", other)?;
                Value::Null
            }
        })
        .filter(|v| !v.is_null());
    }
    let mut keep_alive = None;
    for (key, value) in &r.extra {
        match key.as_str() {
            "think" => think = Some(value.clone()),
            "top_k" => options.top_k = Some(value.clone()),
            "num_ctx" => options.num_ctx = Some(value.clone()),
            "keep_alive" => keep_alive = Some(value.clone()),
            other => params.unsupported(other)?,
        }
    }
    match ToolChoice::from_request(r)? {
        None | Some(ToolChoice::Auto) => {}
        Some(_) => params.unsupported("tool_choice")?,
    }
    if r.parallel_tool_calls == Some(false) {
        params.unsupported_value("parallel_tool_calls", "false")?;
    }
    if let Some(n) = r.n.filter(|n| *n > 1) {
        params.unsupported_value("n", &n.to_string())?;
    }
    if r.user.is_some() {
        params.unsupported("user")?;
    }
    Ok(WireRequest {
        model,
        messages,
        stream,
        tools: r.tools.as_ref().filter(|t| !t.is_empty()),
        format,
        options,
        think,
        keep_alive,
    })
}

// ---- responses ----

#[derive(Debug, Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: Option<ResponseMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

/// Folds one response object (a whole response or one NDJSON line) into chunks.
#[derive(Debug)]
pub(crate) struct StreamState {
    meta: ChunkMeta,
    first: bool,
    next_tool: u32,
    done: bool,
}

impl StreamState {
    pub fn new(model: &str) -> Self {
        StreamState {
            meta: ChunkMeta::new(model),
            first: true,
            next_tool: 0,
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
        let r: WireResponse = serde_json::from_str(&ev.data).map_err(|_| EventError::Malformed)?;
        self.push(r, out).map_err(EventError::from)
    }

    fn terminator(&self) -> &'static str {
        "done:true"
    }
}

impl StreamState {
    fn push(&mut self, r: WireResponse, out: &mut Vec<Emitted>) -> Result<(), ProviderError> {
        if let Some(e) = r.error {
            return Err(classify_message(None, &error_text(&e)));
        }
        if let Some(m) = r.model.filter(|m| !m.is_empty()) {
            self.meta.model = m;
        }
        let mut delta = if std::mem::take(&mut self.first) {
            role_delta()
        } else {
            Delta::default()
        };
        if let Some(m) = r.message {
            if !m.content.is_empty() {
                delta.content = Some(m.content);
            }
            delta.reasoning_content = m.thinking.filter(|t| !t.is_empty());
            for tc in m.tool_calls {
                let k = self.next_tool;
                self.next_tool += 1;
                let id = format!("call_{}_{k}", self.meta.id);
                let args = match tc.function.arguments {
                    Value::Null => "{}".to_string(),
                    Value::String(s) => s,
                    v => v.to_string(),
                };
                let call = tool_call_start(k, id, tc.function.name, args);
                delta
                    .tool_calls
                    .get_or_insert_with(Vec::new)
                    .extend(call.tool_calls.into_iter().flatten());
            }
        }
        let has_delta = delta.role.is_some()
            || delta.content.is_some()
            || delta.reasoning_content.is_some()
            || delta.tool_calls.is_some();
        if has_delta {
            self.meta.emit(out, 0, delta, None);
        }
        if r.done {
            self.done = true;
            let finish = match r.done_reason.as_deref() {
                Some("length") => "length",
                _ if self.next_tool > 0 => "tool_calls",
                _ => "stop",
            };
            self.meta
                .emit(out, 0, Delta::default(), Some(finish.to_string()));
            if r.prompt_eval_count.is_some() || r.eval_count.is_some() {
                let usage = Usage::new(r.prompt_eval_count.unwrap_or(0), r.eval_count.unwrap_or(0));
                out.push(Emitted {
                    chunk: self.meta.usage_chunk(usage),
                    raw: None,
                });
            }
        }
        Ok(())
    }
}

fn parse_completion(bytes: &[u8], model: &str) -> Result<ChatCompletion, ProviderError> {
    let r: WireResponse = serde_json::from_slice(bytes).map_err(|_| {
        ProviderError::new(ErrorClass::Server, "ollama returned a malformed response")
    })?;
    let mut state = StreamState::new(model);
    let mut out = Vec::new();
    state.push(r, &mut out)?;
    let mut acc = Accumulator::new();
    for e in &out {
        acc.push(&e.chunk);
    }
    let mut c = acc.into_completion()?;
    c.object = "chat.completion".into();
    Ok(c)
}

// ---- errors ----

fn error_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // The `/v1` surface uses OpenAI's envelope.
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        other => other.to_string(),
    }
}

/// Classifies a non-2xx response (`{"error":"…"}`).
fn classify(status: u16, body: &str) -> ProviderError {
    #[derive(Deserialize)]
    struct Envelope {
        error: Value,
    }
    let message = serde_json::from_str::<Envelope>(body)
        .map(|e| error_text(&e.error))
        .unwrap_or_else(|_| body.to_string());
    classify_message(Some(status), &message)
}

fn classify_message(status: Option<u16>, message: &str) -> ProviderError {
    let lower = message.to_ascii_lowercase();
    let class = if is_context_message(&lower) {
        ErrorClass::ContextWindow
    } else if lower.contains("server busy") || lower.contains("overloaded") {
        ErrorClass::Overloaded
    } else {
        class_of_status(status)
    };
    let message = if message.is_empty() {
        format!("HTTP {}", status.unwrap_or(500))
    } else {
        message.to_string()
    };
    let mut e = ProviderError::new(class, message);
    e.status = status;
    e
}

/// Ollama's native `/api/chat`.
pub(crate) struct Ollama;

impl Wire for Ollama {
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
        (Framing::Ndjson, Box::new(StreamState::new(model)))
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
        let mut d = StreamDecoder::for_wire(&Ollama, "llama3.2");
        let mut out = Vec::new();
        let mut r = Ok(());
        for piece in input.as_bytes().chunks(9) {
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

    /// A stream as Ollama sends it, CRLF line ends, a thinking line and a tool call.
    #[test]
    fn fixture_ndjson_stream_with_thinking_tool_call_and_usage() {
        let body = "{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:32:53.8Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"Tokyo?\"},\"done\":false}\r\n\
{\"model\":\"llama3.2\",\"created_at\":\"…\",\"message\":{\"role\":\"assistant\",\"content\":\"The\"},\"done\":false}\r\n\
{\"model\":\"llama3.2\",\"created_at\":\"…\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Tokyo\"}}}]},\"done\":false}\r\n\
{\"model\":\"llama3.2\",\"created_at\":\"…\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,\"eval_count\":282,\"total_duration\":4883583458,\"load_duration\":1334875,\"prompt_eval_duration\":342546000,\"eval_duration\":4535599000}\r\n";
        let (c, r) = decode(body);
        r.unwrap();
        let m = &c.choices[0].message;
        assert_eq!(m.reasoning_content.as_deref(), Some("Tokyo?"));
        assert!(matches!(&m.content, Some(Content::Text(t)) if t == "The"));
        let tc = &m.tool_calls.as_ref().unwrap()[0];
        assert_eq!(tc.function.arguments, r#"{"city":"Tokyo"}"#);
        assert!(!tc.id.is_empty(), "Ollama sends no id; one is made");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let u = c.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (26, 282));
    }

    #[test]
    fn error_line_and_missing_done_line() {
        let head = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n";
        let (_, r) = decode(head);
        assert_eq!(r.unwrap_err().class, ErrorClass::TruncatedStream);
        let (_, r) = decode(&format!("{head}{{\"error\":\"an error was encountered while running the model: unexpected EOF\"}}\n"));
        assert_eq!(r.unwrap_err().class, ErrorClass::Server);
    }

    #[test]
    fn non_stream_response_and_errors() {
        let body = br#"{"model":"llama3.2","created_at":"2025-07-07T20:32:53.8Z","message":{"role":"assistant","content":"Hello."},"done":true,"done_reason":"length","total_duration":3244883583,"prompt_eval_count":169,"eval_count":18}"#;
        let c = parse_completion(body, "m").unwrap();
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("length"));
        assert_eq!(c.usage.unwrap().total_tokens, 187);
        assert_eq!(
            classify(
                400,
                r#"{"error":"the input length exceeds the context length"}"#
            )
            .class,
            ErrorClass::ContextWindow
        );
        assert_eq!(
            classify(
                404,
                r#"{"error":"model \"llama9\" not found, try pulling it first"}"#
            )
            .class,
            ErrorClass::NotFound
        );
        assert_eq!(classify(502, "{}").class, ErrorClass::Server);
    }

    #[test]
    fn request_maps_options_format_think_and_tool_results() {
        let r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "x",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"}
            ],
            "max_tokens": 50, "temperature": 0.1, "stop": "x", "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
            "reasoning_effort": "medium"
        }))
        .unwrap();
        let b = serde_json::to_value(
            body("llama", &r, true, &mut Params::with("ollama", false)).unwrap(),
        )
        .unwrap();
        assert_eq!(b["messages"][0]["images"][0], "QUJD");
        assert_eq!(b["messages"][0]["content"], "What is this?");
        assert_eq!(
            b["messages"][1]["tool_calls"][0]["function"]["arguments"]["q"],
            1
        );
        assert_eq!(b["messages"][2]["tool_name"], "look");
        assert_eq!(b["options"]["num_predict"], 50);
        assert_eq!(b["options"]["stop"][0], "x");
        assert_eq!(b["format"]["type"], "object");
        assert_eq!(b["think"], "medium");
        assert_eq!(b["stream"], true);
    }
}
