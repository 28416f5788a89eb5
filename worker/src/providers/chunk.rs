//! The chunk types every adapter emits while normalising a stream: a leaf module that the
//! adapters (`openai.rs`, `anthropic.rs`, `gemini.rs`, `ollama.rs`) and the stream driver
//! (`stream.rs`) use, and that uses none of them.

use bytes::Bytes;
use sluice_schemas::openai::{ChatCompletionChunk, ChunkChoice, Delta, Role, ToolCallDelta, Usage};

use super::error::ProviderError;

/// One normalised chunk, with the provider's own JSON when that already is this chunk.
#[derive(Debug)]
pub struct Emitted {
    pub chunk: ChatCompletionChunk,
    pub raw: Option<Bytes>,
}

/// Why one stream payload could not be used.
#[derive(Debug)]
pub enum EventError {
    /// Not the JSON the protocol sends (garbage, or cut off by the end of the stream).
    Malformed,
    /// The provider reported an error inside the stream.
    Provider(ProviderError),
}

impl From<ProviderError> for EventError {
    fn from(e: ProviderError) -> Self {
        EventError::Provider(e)
    }
}

/// The id, model and creation time every chunk of one response carries.
#[derive(Debug, Clone)]
pub struct ChunkMeta {
    pub id: String,
    pub model: String,
    pub created: i64,
}

impl ChunkMeta {
    /// A fresh `chatcmpl-…` id, for protocols whose responses carry none.
    pub fn new(model: &str) -> Self {
        ChunkMeta {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            model: model.to_string(),
            created: now_secs(),
        }
    }

    pub fn chunk(&self, index: u32, delta: Delta, finish: Option<String>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index,
                delta,
                finish_reason: finish,
            }],
            usage: None,
        }
    }

    /// The trailing usage chunk (`choices: []`), as OpenAI sends with `include_usage`.
    pub fn usage_chunk(&self, usage: Usage) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }

    pub fn emit(&self, out: &mut Vec<Emitted>, index: u32, delta: Delta, finish: Option<String>) {
        out.push(Emitted {
            chunk: self.chunk(index, delta, finish),
            raw: None,
        });
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The first delta of a streamed tool call (id, name, empty or whole arguments).
pub fn tool_call_start(index: u32, id: String, name: String, args: String) -> Delta {
    Delta {
        tool_calls: Some(vec![ToolCallDelta {
            index,
            id: Some(id),
            kind: Some("function".into()),
            function: Some(sluice_schemas::openai::FunctionCallDelta {
                name: Some(name),
                arguments: Some(args),
            }),
        }]),
        ..Delta::default()
    }
}

/// The assistant role delta that opens a stream.
pub fn role_delta() -> Delta {
    Delta {
        role: Some(Role::Assistant),
        content: Some(String::new()),
        ..Delta::default()
    }
}
