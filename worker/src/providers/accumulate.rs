//! Builds the final `chat.completion` from streamed chunks.
//!
//! Indexes come from the provider's bytes, so they are bounded: a choice index of
//! [`MAX_CHOICES`] or more, or more than [`MAX_TOOL_CALLS`] tool calls in one choice, is
//! refused without allocating, and [`Accumulator::into_completion`] fails the attempt as
//! a bad response.

use sluice_schemas::openai::{
    ChatCompletion, ChatCompletionChunk, Choice, Content, FunctionCall, Message, Role, ToolCall,
    Usage,
};

#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<Role>,
    content: String,
    reasoning: String,
    refusal: String,
    thinking_blocks: Vec<serde_json::Value>,
    tools: Vec<ToolAcc>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default)]
struct ToolAcc {
    index: u32,
    id: String,
    kind: String,
    name: String,
    arguments: String,
}

/// Most choices one response may carry (OpenAI's `n` is at most 128).
pub const MAX_CHOICES: usize = 128;
/// Most tool calls one choice may carry.
pub const MAX_TOOL_CALLS: usize = 1024;

/// Folds chunks into one completion.
#[derive(Debug, Default)]
pub struct Accumulator {
    id: String,
    model: String,
    created: i64,
    choices: Vec<ChoiceAcc>,
    usage: Option<Usage>,
    chunks: usize,
    /// Why a chunk was refused (an index out of bounds), if one was.
    refused: Option<String>,
}

impl Accumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of chunks seen.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether any choice has finished.
    pub fn finished(&self) -> bool {
        self.choices.iter().any(|c| c.finish_reason.is_some())
    }

    pub fn push(&mut self, chunk: &ChatCompletionChunk) {
        self.chunks += 1;
        if self.id.is_empty() && !chunk.id.is_empty() {
            self.id.clone_from(&chunk.id);
            self.created = chunk.created;
        }
        if self.model.is_empty() && !chunk.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in &chunk.choices {
            let i = c.index as usize;
            if i >= MAX_CHOICES {
                self.refused.get_or_insert_with(|| {
                    format!(
                        "provider sent choice index {i}; at most {} choices are accepted",
                        MAX_CHOICES
                    )
                });
                continue;
            }
            if self.choices.len() <= i {
                self.choices.resize_with(i + 1, ChoiceAcc::default);
            }
            let acc = &mut self.choices[i];
            let d = &c.delta;
            if d.role.is_some() {
                acc.role = d.role;
            }
            if let Some(t) = &d.content {
                acc.content.push_str(t);
            }
            if let Some(t) = &d.reasoning_content {
                acc.reasoning.push_str(t);
            }
            if let Some(t) = &d.refusal {
                acc.refusal.push_str(t);
            }
            if let Some(blocks) = &d.thinking_blocks {
                acc.thinking_blocks.extend(blocks.iter().cloned());
            }
            for tc in d.tool_calls.iter().flatten() {
                let p = match acc.tools.iter().position(|t| t.index == tc.index) {
                    Some(p) => p,
                    None if acc.tools.len() >= MAX_TOOL_CALLS
                        || tc.index as usize >= MAX_TOOL_CALLS =>
                    {
                        self.refused.get_or_insert_with(|| {
                            format!(
                                "provider sent tool call index {}; at most {MAX_TOOL_CALLS} tool calls are accepted",
                                tc.index
                            )
                        });
                        continue;
                    }
                    None => {
                        acc.tools.push(ToolAcc {
                            index: tc.index,
                            ..Default::default()
                        });
                        acc.tools.len() - 1
                    }
                };
                let slot = &mut acc.tools[p];
                if let Some(id) = &tc.id {
                    slot.id.clone_from(id);
                }
                if let Some(k) = &tc.kind {
                    slot.kind.clone_from(k);
                }
                if let Some(f) = &tc.function {
                    if let Some(n) = &f.name {
                        slot.name.push_str(n);
                    }
                    if let Some(a) = &f.arguments {
                        slot.arguments.push_str(a);
                    }
                }
            }
            if c.finish_reason.is_some() {
                acc.finish_reason.clone_from(&c.finish_reason);
            }
        }
    }

    /// The completion, or a bad-response error if a chunk was refused.
    pub fn into_completion(self) -> Result<ChatCompletion, super::error::ProviderError> {
        match &self.refused {
            Some(why) => Err(super::error::ProviderError::new(
                sluice_schemas::ErrorClass::Server,
                format!("bad response: {why}"),
            )),
            None => Ok(self.finish()),
        }
    }

    pub fn finish(self) -> ChatCompletion {
        let non_empty = |s: String| if s.is_empty() { None } else { Some(s) };
        let choices = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let tool_calls: Vec<ToolCall> = c
                    .tools
                    .into_iter()
                    .map(|t| ToolCall {
                        id: t.id,
                        kind: if t.kind.is_empty() {
                            "function".into()
                        } else {
                            t.kind
                        },
                        function: FunctionCall {
                            name: t.name,
                            arguments: t.arguments,
                        },
                    })
                    .collect();
                let has_tools = !tool_calls.is_empty();
                Choice {
                    index: i as u32,
                    message: Message {
                        role: c.role.unwrap_or(Role::Assistant),
                        content: if c.content.is_empty() && has_tools {
                            None
                        } else {
                            Some(Content::Text(c.content))
                        },
                        name: None,
                        tool_calls: has_tools.then_some(tool_calls),
                        tool_call_id: None,
                        refusal: non_empty(c.refusal),
                        reasoning_content: non_empty(c.reasoning),
                        thinking_blocks: (!c.thinking_blocks.is_empty())
                            .then_some(c.thinking_blocks),
                    },
                    finish_reason: c.finish_reason,
                }
            })
            .collect();
        ChatCompletion {
            id: self.id,
            object: "chat.completion".into(),
            created: self.created,
            model: self.model,
            choices,
            usage: self.usage,
            system_fingerprint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: &str) -> ChatCompletionChunk {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn text_tool_calls_and_usage_are_folded() {
        let mut a = Accumulator::new();
        a.push(&chunk(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}],"usage":null}"#));
        a.push(&chunk(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"lo","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"a\":"}}]},"finish_reason":null}]}"#));
        a.push(&chunk(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#));
        a.push(&chunk(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#));
        assert!(a.finished());
        let c = a.finish();
        let m = &c.choices[0].message;
        assert!(matches!(&m.content, Some(Content::Text(t)) if t == "Hello"));
        let tc = &m.tool_calls.as_ref().unwrap()[0];
        assert_eq!(tc.id, "call_1");
        assert_eq!(tc.function.arguments, "{\"a\":1}");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(c.usage.unwrap().total_tokens, 12);
    }

    #[test]
    fn a_huge_choice_or_tool_index_fails_the_attempt_without_allocating() {
        let mut a = Accumulator::new();
        a.push(&chunk(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":4294967295,"delta":{"content":"x"},"finish_reason":null}]}"#));
        assert!(a.choices.capacity() < MAX_CHOICES);
        assert!(a
            .into_completion()
            .unwrap_err()
            .message
            .contains("choice index"));
        let mut a = Accumulator::new();
        a.push(&chunk(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":4294967295,"function":{"name":"f"}}]},"finish_reason":null}]}"#));
        assert!(a
            .into_completion()
            .unwrap_err()
            .message
            .contains("tool call index"));
    }
}
