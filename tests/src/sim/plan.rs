//! What the simulator answers, before any protocol renders it: deterministic words, an
//! optional tool call and optional reasoning, with token counts.

use serde_json::{Map, Value};

/// The protocol-neutral facts of one request that decide the answer.
#[derive(Debug, Default)]
pub struct PlanInput<'a> {
    /// Hashed for the words (the protocol's messages/contents as sent).
    pub conversation: &'a Value,
    pub seed: Option<i64>,
    pub model: &'a str,
    /// Output-token cap.
    pub cap: Option<u32>,
    /// The first tool offered: name and JSON-Schema parameters.
    pub tool: Option<(String, Value)>,
    /// Tools may not be called (`tool_choice: none`).
    pub tools_off: bool,
    /// The last turn is a tool result: answer in text.
    pub after_tool_result: bool,
    /// The request asked for thinking.
    pub wants_reasoning: bool,
    /// Characters of prompt text, for a prompt-token count.
    pub prompt_chars: usize,
    pub prompt_messages: usize,
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Content pieces, one chunk each (the first without a leading space).
    pub words: Vec<String>,
    pub reasoning: Vec<String>,
    /// Tool name and arguments (a JSON object).
    pub tool: Option<(String, Value)>,
    pub prompt_tokens: u64,
    /// The answer stopped at the output cap.
    pub length: bool,
}

impl Plan {
    pub fn new(i: &PlanInput<'_>, chunks: u32) -> Plan {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in i.conversation.to_string().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= i.seed.unwrap_or(0) as u64;
        let model = i.model.to_ascii_lowercase();
        let reasoning = if i.wants_reasoning || model.contains("reason") || model.contains("think")
        {
            words(&mut h, 4, "Considering")
        } else {
            Vec::new()
        };
        let tool = match &i.tool {
            Some((name, schema)) if !i.tools_off && !i.after_tool_result => {
                Some((name.clone(), arguments(schema, &mut h)))
            }
            _ => None,
        };
        let cap = i.cap.unwrap_or(u32::MAX);
        let want = if tool.is_some() { 0 } else { chunks.max(1) };
        let n = want.min(cap.max(1));
        Plan {
            words: words(&mut h, n, ""),
            reasoning,
            tool,
            prompt_tokens: (i.prompt_chars as u64).div_ceil(4) + 4 * i.prompt_messages as u64,
            length: n < want,
        }
    }

    pub fn text(&self) -> String {
        self.words.concat()
    }

    pub fn reasoning_text(&self) -> String {
        self.reasoning.concat()
    }

    pub fn reasoning_tokens(&self) -> u64 {
        self.reasoning.len() as u64
    }

    /// Output tokens: one a word, a few for a tool call, plus reasoning.
    pub fn completion_tokens(&self) -> u64 {
        self.words.len() as u64 + self.reasoning_tokens() + if self.tool.is_some() { 5 } else { 0 }
    }

    /// The tool call's arguments as a JSON string, and split in two pieces for streaming.
    pub fn tool_arguments(&self) -> Option<(String, String, String)> {
        let (_, args) = self.tool.as_ref()?;
        let s = args.to_string();
        let mut mid = s.len() / 2;
        while !s.is_char_boundary(mid) {
            mid -= 1;
        }
        Some((s.clone(), s[..mid].to_string(), s[mid..].to_string()))
    }
}

const WORDS: &[&str] = &[
    "the", "river", "carries", "light", "through", "quiet", "stone", "and", "every", "gate",
    "opens", "slowly", "toward", "morning", "water", "finds", "its", "level", "again", "sluice",
];

fn next(h: &mut u64, i: u32) -> &'static str {
    *h ^= *h >> 33;
    *h = h
        .wrapping_mul(0xff51_afd7_ed55_8ccd)
        .wrapping_add(u64::from(i));
    WORDS[(*h % WORDS.len() as u64) as usize]
}

fn words(h: &mut u64, n: u32, first: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let w = if i == 0 && !first.is_empty() {
                first
            } else {
                next(h, i)
            };
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// Arguments that fit the tool's schema: a word for strings, 1 for numbers, true for
/// booleans.
fn arguments(schema: &Value, h: &mut u64) -> Value {
    let mut args = Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (i, (name, p)) in props.iter().enumerate() {
            let kind = p
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("string")
                .to_ascii_lowercase();
            let v = match kind.as_str() {
                "number" | "integer" => Value::from(1),
                "boolean" => Value::Bool(true),
                _ => Value::String(next(h, i as u32).to_string()),
            };
            args.insert(name.clone(), v);
        }
    }
    Value::Object(args)
}

/// The characters of text in a JSON value (all strings inside it).
pub fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_chars).sum(),
        Value::Object(o) => o.values().map(text_chars).sum(),
        _ => 0,
    }
}
