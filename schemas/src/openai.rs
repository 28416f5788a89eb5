//! OpenAI Chat Completions shapes: the request every job carries, and the
//! `chat.completion` / `chat.completion.chunk` shapes every provider is normalised to.
//!
//! Unknown request fields are kept in `extra` and passed through, so a parameter this
//! crate does not name yet is never silently dropped.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A chat-completion request as OpenAI defines it. Read by hand ([`ChatRequest::deserialize`]).
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Parameters not named above, passed through to OpenAI-compatible providers as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// The output-token cap the caller asked for, whichever field they used.
    pub fn output_cap(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// A field of [`ChatRequest`] by its name; any other name is kept for `extra`.
enum RequestField {
    Known(usize),
    Other(String),
}

/// The names of [`ChatRequest`]'s own fields, in the order [`ChatRequest::deserialize`]
/// reads them by.
const REQUEST_FIELDS: [&str; 17] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
];

impl<'de> Deserialize<'de> for RequestField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = RequestField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestField, E> {
                Ok(match REQUEST_FIELDS.iter().position(|f| *f == v) {
                    Some(i) => RequestField::Known(i),
                    None => RequestField::Other(v.to_string()),
                })
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RequestField, E> {
                Ok(match REQUEST_FIELDS.iter().position(|f| *f == v) {
                    Some(i) => RequestField::Known(i),
                    None => RequestField::Other(v),
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

impl<'de> Deserialize<'de> for ChatRequest {
    /// Reads the fields in one pass, the unnamed ones into `extra`: what the derived
    /// reader with its `#[serde(flatten)]` map accepts (the same fields, errors for a
    /// missing `model` or `messages` and for a field given twice), without first
    /// buffering the whole request as serde's flatten does (the api parses every
    /// submission, the worker every envelope).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Request;
        impl<'de> serde::de::Visitor<'de> for Request {
            type Value = ChatRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a chat completion request")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ChatRequest, A::Error> {
                use serde::de::Error as _;
                let mut r = ChatRequest::default();
                let (mut model, mut messages) = (None, None);
                let mut seen = 0u32;
                while let Some(field) = map.next_key::<RequestField>()? {
                    let i = match field {
                        RequestField::Other(name) => {
                            let value: Value = map.next_value()?;
                            r.extra.insert(name, value);
                            continue;
                        }
                        RequestField::Known(i) => i,
                    };
                    if seen & (1 << i) != 0 {
                        return Err(A::Error::duplicate_field(REQUEST_FIELDS[i]));
                    }
                    seen |= 1 << i;
                    match i {
                        0 => model = Some(map.next_value()?),
                        1 => messages = Some(map.next_value()?),
                        2 => r.stream = map.next_value()?,
                        3 => r.stream_options = map.next_value()?,
                        4 => r.max_tokens = map.next_value()?,
                        5 => r.max_completion_tokens = map.next_value()?,
                        6 => r.temperature = map.next_value()?,
                        7 => r.top_p = map.next_value()?,
                        8 => r.n = map.next_value()?,
                        9 => r.seed = map.next_value()?,
                        10 => r.stop = map.next_value()?,
                        11 => r.tools = map.next_value()?,
                        12 => r.tool_choice = map.next_value()?,
                        13 => r.parallel_tool_calls = map.next_value()?,
                        14 => r.response_format = map.next_value()?,
                        15 => r.reasoning_effort = map.next_value()?,
                        _ => r.user = map.next_value()?,
                    }
                }
                r.model = model.ok_or_else(|| A::Error::missing_field("model"))?;
                r.messages = messages.ok_or_else(|| A::Error::missing_field("messages"))?;
                Ok(r)
            }
        }
        d.deserialize_map(Request)
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Signed reasoning blocks (Anthropic `thinking` with its `signature`,
    /// `redacted_thinking`), as LiteLLM names them: returned on answers, and sent back on
    /// the assistant turn of the next request so a thinking model keeps its reasoning
    /// across tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_blocks: Option<Vec<Value>>,
}

impl Message {
    pub fn user(text: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            refusal: None,
            reasoning_content: None,
            thinking_blocks: None,
        }
    }

    /// The plain text of this message (text parts joined), for token estimates.
    pub fn text(&self) -> String {
        self.content.iter().flat_map(Content::texts).collect()
    }
}

/// A message's content: a string, or a list of parts. Serialized by hand (as the untagged
/// enum it is) because prompt texts are most of what the api and the worker encode per
/// job: see [`Content::serialize`].
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// What serde's untagged reader says of a content that is neither form; kept, so a bad
/// request is told the same as before [`Content::deserialize`] was written by hand.
const NOT_CONTENT: &str = "data did not match any variant of untagged enum Content";

impl<'de> Deserialize<'de> for Content {
    /// The string or the list, read straight from the input: serde's untagged reader
    /// buffers every content (most of a prompt's bytes) before trying each form.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Content, A::Error> {
                let seq = serde::de::value::SeqAccessDeserializer::new(seq);
                Vec::<ContentPart>::deserialize(seq)
                    .map(Content::Parts)
                    .map_err(|_| serde::de::Error::custom(NOT_CONTENT))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Content, E> {
                Err(E::custom(NOT_CONTENT))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Content, E> {
                Err(E::custom(NOT_CONTENT))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Content, E> {
                Err(E::custom(NOT_CONTENT))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Content, E> {
                Err(E::custom(NOT_CONTENT))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Content, E> {
                Err(E::custom(NOT_CONTENT))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Content, A::Error> {
                Err(serde::de::Error::custom(NOT_CONTENT))
            }
        }
        d.deserialize_any(Form)
    }
}

impl Content {
    /// The texts of this content: the string, or each text part in order.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        let (text, parts) = match self {
            Content::Text(t) => (Some(t.as_str()), &[][..]),
            Content::Parts(p) => (None, p.as_slice()),
        };
        text.into_iter()
            .chain(parts.iter().filter_map(|p| p.text.as_deref()))
    }
}

/// Texts shorter than this are escaped by serde_json as usual (the raw path's allocation
/// would cost more than it saves).
const RAW_TEXT_MIN: usize = 64;

impl Serialize for Content {
    /// A text with nothing to escape (no control character, quote or backslash: most
    /// prompts) is written as it is, checked 32 bytes at a time, instead of serde_json's
    /// byte-by-byte escaping; the bytes written are the same.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(t) if t.len() >= RAW_TEXT_MIN && !needs_escape(t.as_bytes()) => {
                let mut quoted = String::with_capacity(t.len() + 2);
                quoted.push('"');
                quoted.push_str(t);
                quoted.push('"');
                Verbatim(&quoted).serialize(s)
            }
            Content::Text(t) => s.serialize_str(t),
            Content::Parts(p) => p.serialize(s),
        }
    }
}

/// serde_json's name for a raw JSON value: its serializer writes the one string field of
/// a struct so named as it is (`serde_json::value::RawValue` serializes itself so).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// A JSON value known to be valid, serialized the way `serde_json::value::RawValue` is,
/// without the parse `RawValue::from_string` makes to check it (for a long prompt, a
/// second pass over its every byte).
struct Verbatim<'a>(&'a str);

impl Serialize for Verbatim<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut raw = s.serialize_struct(RAW_VALUE_TOKEN, 1)?;
        raw.serialize_field(RAW_VALUE_TOKEN, self.0)?;
        raw.end()
    }
}

/// Whether JSON must escape a byte of `bytes` (what serde_json escapes: control
/// characters, `"` and `\\`). Without an early exit inside a chunk, so it vectorises.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.chunks(32).any(|chunk| {
        chunk.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    })
}

/// One part of a multi-part message (`text`, `image_url`, `input_audio`, `file`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// Token usage, OpenAI's shape. Detail counts are already inside the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

impl Usage {
    pub fn new(prompt: u64, completion: u64) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: None,
            completion_tokens_details: None,
        }
    }
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }
    pub fn cache_creation_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cache_creation_tokens)
            .unwrap_or(0)
    }
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PromptTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Anthropic-style cache writes, kept under OpenAI's details object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

/// `chat.completion`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// `chat.completion.chunk`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChatCompletionChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Whole signed reasoning blocks, each sent once it is complete (see
    /// [`Message::thinking_blocks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_blocks: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_text_is_written_exactly_as_serde_json_writes_a_string() {
        let long = "word ".repeat(40);
        let texts = [
            "short".to_string(),
            long.clone(),
            format!("{long}\"quoted\""),
            format!("{long}back\\slash"),
            format!("{long}new\nline\ttab\u{1}"),
            format!("{long}Grüße, 世界 🚀 / \u{7f}"),
        ];
        for t in texts {
            let content = serde_json::to_string(&Content::Text(t.clone())).unwrap();
            assert_eq!(content, serde_json::to_string(&t).unwrap(), "{t:?}");
            let back: Content = serde_json::from_str(&content).unwrap();
            assert!(matches!(back, Content::Text(b) if b == t));
            // Through a `Value` too (the raw path must not leak serde_json's raw token).
            let value = serde_json::to_value(Content::Text(t.clone())).unwrap();
            assert_eq!(value, Value::String(t));
        }
    }

    #[test]
    fn a_request_reads_its_own_fields_and_keeps_the_others_in_extra() {
        let text = r#"{"model":"g","messages":[{"role":"user","content":"hi"}],"stream":true,
            "max_tokens":64,"temperature":null,"stop":["a","b"],"tool_choice":"auto",
            "logit_bias":{"1":2},"priority":"high","user":"u"}"#;
        let r: ChatRequest = serde_json::from_str(text).unwrap();
        assert_eq!((r.model.as_str(), r.messages.len()), ("g", 1));
        assert_eq!(
            (r.stream, r.max_tokens, r.temperature),
            (Some(true), Some(64), None)
        );
        assert!(matches!(&r.stop, Some(Stop::Many(s)) if s.len() == 2));
        assert_eq!(r.tool_choice, Some(Value::String("auto".into())));
        assert_eq!(r.user.as_deref(), Some("u"));
        assert_eq!(r.extra.len(), 2);
        assert_eq!(r.extra["logit_bias"], serde_json::json!({"1": 2}));
        // The same from a `Value`, and through what it writes.
        let value: Value = serde_json::from_str(text).unwrap();
        let again: ChatRequest = serde_json::from_value(value).unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
        let written: ChatRequest =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(written.extra, r.extra);
        let err = |t: &str| {
            serde_json::from_str::<ChatRequest>(t)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"messages":[]}"#).contains("missing field `model`"));
        assert!(err(r#"{"model":"g"}"#).contains("missing field `messages`"));
        assert!(
            err(r#"{"model":"g","messages":[],"model":"h"}"#).contains("duplicate field `model`")
        );
        assert!(err(r#"{"model":"g","messages":[],"max_tokens":"x"}"#).contains("invalid type"));
        assert!(err(r#"["g",[]]"#).contains("invalid type"));
    }

    #[test]
    fn content_that_is_neither_form_is_refused_as_the_untagged_reader_did() {
        for bad in ["5", "true", "{}", r#"[{"text":"no type"}]"#, "[1]"] {
            let err = serde_json::from_str::<Content>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(NOT_CONTENT), "{bad}: {err}");
        }
        let escaped: Content = serde_json::from_str(r#""a\"b""#).unwrap();
        assert!(matches!(escaped, Content::Text(t) if t == "a\"b"));
        let via_value: Content = serde_json::from_value(serde_json::json!("x")).unwrap();
        assert!(matches!(via_value, Content::Text(t) if t == "x"));
    }

    #[test]
    fn content_parts_are_written_as_a_list_and_read_back() {
        let text = r#"[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}}]"#;
        let content: Content = serde_json::from_str(text).unwrap();
        assert!(matches!(&content, Content::Parts(p) if p.len() == 2));
        assert_eq!(serde_json::to_string(&content).unwrap(), text);
    }
}
