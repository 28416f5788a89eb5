//! Pieces of the OpenAI request that every non-OpenAI adapter maps the same way: the
//! `tool_choice` forms, `response_format`, `reasoning_effort` budgets, image parts given as
//! `data:` URLs, and the tool-call ids a tool result answers.
//!
//! Owns reading the OpenAI side only; each adapter writes its own wire shape.

use std::collections::HashMap;

use serde_json::Value;
use sluice_core::config::Deployment;
use sluice_schemas::openai::{ChatRequest, Content, ContentPart, Message};

use super::error::ProviderError;
use super::params::bad_request;

/// A POST to `d`'s chat URL, `url` built and parsed on the deployment's first call only
/// (`Deployment::chat_url`): reqwest parses a URL given as a string on every request.
pub(crate) fn post_chat(
    http: &reqwest::Client,
    d: &Deployment,
    url: fn(&Deployment) -> String,
) -> reqwest::RequestBuilder {
    match d.chat_url(url) {
        Ok(parsed) => http.post(parsed),
        // Not a URL: reqwest reports it when the request is sent, as it always has.
        Err(_) => http.post(url(d)),
    }
}

/// OpenAI's `tool_choice`, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

impl ToolChoice {
    pub fn from_request(r: &ChatRequest) -> Result<Option<ToolChoice>, ProviderError> {
        let Some(v) = &r.tool_choice else {
            return Ok(None);
        };
        Ok(Some(match v {
            Value::String(s) if s == "auto" => ToolChoice::Auto,
            Value::String(s) if s == "none" => ToolChoice::None,
            Value::String(s) if s == "required" => ToolChoice::Required,
            Value::Object(o) => match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => ToolChoice::Function(name.to_string()),
                None => return Err(bad_request(format!("unrecognised tool_choice {v}"))),
            },
            other => return Err(bad_request(format!("unrecognised tool_choice {other}"))),
        }))
    }
}

/// OpenAI's `response_format`, read once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    /// The schema of `json_schema.schema` (an empty object when absent).
    JsonSchema(Value),
}

impl ResponseFormat {
    pub fn from_request(r: &ChatRequest) -> Result<Option<ResponseFormat>, ProviderError> {
        let Some(v) = &r.response_format else {
            return Ok(None);
        };
        Ok(Some(match v.get("type").and_then(Value::as_str) {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => ResponseFormat::JsonSchema(
                v.get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Default::default())),
            ),
            _ => return Err(bad_request(format!("unrecognised response_format {v}"))),
        }))
    }
}

/// A thinking budget in tokens for `reasoning_effort` (LiteLLM's mapping), `Some(0)` for
/// `none`, `None` for a value no provider knows.
pub(crate) fn reasoning_budget(effort: &str) -> Option<u32> {
    match effort {
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(2048),
        "high" => Some(4096),
        _ => None,
    }
}

/// `data:<mime>;base64,<data>` → (mime, data).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

/// The URL of an `image_url` part (`{"image_url":{"url":…}}` or `{"image_url":"…"}`).
pub(crate) fn image_url(part: &ContentPart) -> Option<&str> {
    match part.extra.get("image_url")? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("url").and_then(Value::as_str),
        _ => None,
    }
}

/// The text of a message: the string, or its text parts joined.
pub(crate) fn text(content: &Option<Content>) -> String {
    content.iter().flat_map(Content::texts).collect()
}

/// Tool-call id → function name, for protocols whose tool results name the function.
pub(crate) fn tool_names(messages: &[Message]) -> HashMap<&str, &str> {
    messages
        .iter()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .map(|tc| (tc.id.as_str(), tc.function.name.as_str()))
        .collect()
}

/// A tool call's `arguments` string as a JSON object (empty means `{}`).
pub(crate) fn arguments(name: &str, args: &str) -> Result<Value, ProviderError> {
    if args.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(args).map_err(|e| {
        bad_request(format!(
            "the arguments of the earlier tool call {name:?} are not valid JSON: {e}"
        ))
    })
}

/// `stop` as a list.
pub(crate) fn stop_list(r: &ChatRequest) -> Option<Vec<String>> {
    use sluice_schemas::openai::Stop;
    match &r.stop {
        None => None,
        Some(Stop::One(s)) => Some(vec![s.clone()]),
        Some(Stop::Many(v)) if v.is_empty() => None,
        Some(Stop::Many(v)) => Some(v.clone()),
    }
}
