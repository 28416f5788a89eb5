//! Token estimates, for admission before a call and for usage a provider did not report.
//!
//! OpenAI-family models are counted with their real tokenizer (tiktoken: `o200k_base`
//! for the gpt-4o/4.1/5 and o-series generation, `cl100k_base` for gpt-4 and 3.5); other
//! models with the rule of thumb of about four characters a token. Both add a few
//! tokens of framing per message. Admission also reserves the request's output cap and
//! settlement corrects the reservation to real usage, so an estimate error only matters
//! while a call is in flight. Texts longer than [`MAX_EXACT_CHARS`] use the rule of
//! thumb too, to keep tokenizing off the hot path's critical budget.
//!
//! Tokenizing is most of what an estimate costs, so admission first reserves a cheap
//! upper bound, [`Tokenizer::Bound`] (a BPE token is at least one byte, so the bytes
//! bound the tokens), and counts exactly only when that bound does not fit a limit
//! (`worker/src/job/pipeline.rs`); settlement replaces either with the real usage.

use sluice_core::config::{Deployment, Protocol};
use sluice_schemas::embeddings::InputItem;
use sluice_schemas::openai::{ChatRequest, Content};

/// Longest message text counted exactly.
pub const MAX_EXACT_CHARS: usize = 32 * 1024;

/// How a deployment's tokens are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    O200k,
    Cl100k,
    Heuristic,
    /// An upper bound on what `O200k` and `Cl100k` count: one token per byte.
    Bound,
}

impl Tokenizer {
    pub fn for_deployment(d: &Deployment) -> Tokenizer {
        if !matches!(d.protocol, Protocol::OpenAi | Protocol::Azure) {
            return Tokenizer::Heuristic;
        }
        let m = d.model.to_ascii_lowercase();
        let m = m.rsplit('/').next().unwrap_or(&m);
        let o_series = m.len() > 1 && m.starts_with('o') && m.as_bytes()[1].is_ascii_digit();
        if m.starts_with("gpt-4o")
            || m.starts_with("gpt-4.1")
            || m.starts_with("gpt-5")
            || m.starts_with("chatgpt-4o")
            || o_series
        {
            Tokenizer::O200k
        } else if m.starts_with("gpt-4") || m.starts_with("gpt-3.5") {
            Tokenizer::Cl100k
        } else {
            Tokenizer::Heuristic
        }
    }

    /// The cheap stand-in for this tokenizer where an upper bound suffices: [`Self::Bound`]
    /// for the exact ones, itself otherwise (the rule of thumb costs nothing).
    pub fn cheap(self) -> Tokenizer {
        match self {
            Tokenizer::O200k | Tokenizer::Cl100k => Tokenizer::Bound,
            t => t,
        }
    }

    /// Tokens in `s`.
    pub fn count(self, s: &str) -> u64 {
        if self == Tokenizer::Bound {
            return s.len() as u64;
        }
        if s.len() > MAX_EXACT_CHARS {
            return text(s.len());
        }
        match self {
            Tokenizer::O200k => tiktoken_rs::o200k_base_singleton().encode_ordinary(s).len() as u64,
            Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton()
                .encode_ordinary(s)
                .len() as u64,
            Tokenizer::Heuristic | Tokenizer::Bound => text(s.len()),
        }
    }
}

/// Loads the tokenizer tables that `tokenizers` count with (a few hundred milliseconds,
/// once) so the first job does not pay for it; the others stay unloaded (o200k_base holds
/// about 27 MB of heap, cl100k_base about 13.5 MB, by heaptrack in `scripts/bench`'s
/// concurrency scenario). Blocking: run it off the async runtime.
pub fn warm(tokenizers: impl IntoIterator<Item = Tokenizer>) {
    // A table already loaded is only looked up again.
    for t in tokenizers {
        match t {
            Tokenizer::O200k => {
                let _ = tiktoken_rs::o200k_base_singleton();
            }
            Tokenizer::Cl100k => {
                let _ = tiktoken_rs::cl100k_base_singleton();
            }
            Tokenizer::Heuristic | Tokenizer::Bound => {}
        }
    }
}

/// Framing tokens per message (role, separators), as OpenAI's cookbook counts them.
const PER_MESSAGE: u64 = 4;

pub fn text(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// Estimated prompt tokens of `request` by the rule of thumb.
pub fn prompt(request: &ChatRequest) -> u64 {
    prompt_with(Tokenizer::Heuristic, request)
}

/// Estimated prompt tokens of `request` with `tokenizer`.
pub fn prompt_with(tokenizer: Tokenizer, request: &ChatRequest) -> u64 {
    request
        .messages
        .iter()
        .map(|m| {
            let content: u64 = m
                .content
                .iter()
                .flat_map(Content::texts)
                .map(|t| tokenizer.count(t))
                .sum();
            let tools: u64 = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| tokenizer.count(&c.function.name) + tokenizer.count(&c.function.arguments))
                .sum();
            content + tools + PER_MESSAGE
        })
        .sum::<u64>()
        + 3
}

/// Tokens of one embeddings input with `tokenizer` (token ids count as themselves).
pub fn embedding_input(tokenizer: Tokenizer, item: InputItem<'_>) -> u64 {
    match item {
        InputItem::Text(t) => tokenizer.count(t),
        InputItem::Tokens(t) => t.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_schemas::openai::Message;

    #[test]
    fn openai_models_use_their_tokenizer() {
        let c = sluice_core::Config::from_yaml(
            "model_list:
  - {model_name: a, litellm_params: {model: openai/gpt-4o-mini}}
  - {model_name: b, litellm_params: {model: openai/gpt-4}}
  - {model_name: c, litellm_params: {model: deepseek/deepseek-chat}}
",
            None,
            &|_: &str| None,
        )
        .unwrap();
        assert_eq!(
            Tokenizer::for_deployment(&c.deployments[0]),
            Tokenizer::O200k
        );
        assert_eq!(
            Tokenizer::for_deployment(&c.deployments[1]),
            Tokenizer::Cl100k
        );
        assert_eq!(
            Tokenizer::for_deployment(&c.deployments[2]),
            Tokenizer::Heuristic
        );
        // "hello world" is two tokens in both OpenAI vocabularies.
        assert_eq!(Tokenizer::O200k.count("hello world"), 2);
        assert_eq!(Tokenizer::Cl100k.count("hello world"), 2);
        assert_eq!(Tokenizer::Heuristic.count("hello world"), 3);
    }

    #[test]
    fn the_bound_is_never_below_the_exact_count() {
        let texts = [
            "hello world",
            "",
            "Grüße, 世界! 🚀🚀 naïve café — ½ ∑ ∞",
            "a a a a a a a a a a a a a a a a",
            "{\"type\":\"function\",\"arguments\":{\"x\":[1,2,3]}}",
            "   \n\n\t  trailing   ",
        ];
        for t in texts {
            for exact in [Tokenizer::O200k, Tokenizer::Cl100k] {
                assert_eq!(exact.cheap(), Tokenizer::Bound);
                assert!(
                    Tokenizer::Bound.count(t) >= exact.count(t),
                    "{exact:?} {t:?}"
                );
            }
        }
        assert_eq!(Tokenizer::Heuristic.cheap(), Tokenizer::Heuristic);
        let r = ChatRequest {
            model: "m".into(),
            messages: vec![Message::user("Grüße, 世界! 🚀 ".repeat(50))],
            ..Default::default()
        };
        assert!(prompt_with(Tokenizer::Bound, &r) >= prompt_with(Tokenizer::O200k, &r));
    }

    #[test]
    fn estimate_grows_with_text_and_messages() {
        let mut r = ChatRequest {
            model: "m".into(),
            messages: vec![Message::user("x".repeat(400))],
            ..Default::default()
        };
        assert_eq!(prompt(&r), 100 + 4 + 3);
        r.messages.push(Message::user(""));
        assert_eq!(prompt(&r), 100 + 8 + 3);
    }
}
