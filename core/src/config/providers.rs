//! The provider registry: which LiteLLM provider prefix speaks which wire protocol, and
//! where it is reached by default.

/// Where an upstream is reached and how it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
    Ollama,
}
/// `openai/gpt-4o` → (`openai`, `gpt-4o`); a bare name resolves by its known family.
pub(super) fn split_provider(model: &str) -> Option<(&str, &str)> {
    if let Some((p, m)) = model.split_once('/') {
        if provider_defaults(p).is_some() && !m.is_empty() {
            return Some((p, m));
        }
    }
    let bare = model;
    if bare.starts_with("gpt-") || bare.starts_with("chatgpt-") || is_o_series(bare) {
        Some(("openai", bare))
    } else if bare.starts_with("claude-") {
        Some(("anthropic", bare))
    } else if bare.starts_with("gemini-") {
        Some(("gemini", bare))
    } else {
        None
    }
}

fn is_o_series(m: &str) -> bool {
    let mut c = m.chars();
    c.next() == Some('o') && c.next().is_some_and(|d| d.is_ascii_digit())
}

/// The protocol and default `api_base` of a LiteLLM provider prefix.
pub fn provider_defaults(provider: &str) -> Option<(Protocol, Option<&'static str>)> {
    Some(match provider {
        "openai" => (Protocol::OpenAi, Some("https://api.openai.com/v1")),
        "deepseek" => (Protocol::OpenAi, Some("https://api.deepseek.com/v1")),
        "openrouter" => (Protocol::OpenAi, Some("https://openrouter.ai/api/v1")),
        "dashscope" => (
            Protocol::OpenAi,
            Some("https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        ),
        "mistral" => (Protocol::OpenAi, Some("https://api.mistral.ai/v1")),
        "groq" => (Protocol::OpenAi, Some("https://api.groq.com/openai/v1")),
        "together_ai" => (Protocol::OpenAi, Some("https://api.together.xyz/v1")),
        "xai" => (Protocol::OpenAi, Some("https://api.x.ai/v1")),
        "hosted_vllm" | "openai_compatible" | "custom_openai" => (Protocol::OpenAi, None),
        "azure" => (Protocol::Azure, None),
        "anthropic" => (Protocol::Anthropic, Some("https://api.anthropic.com")),
        "gemini" => (
            Protocol::Gemini,
            Some("https://generativelanguage.googleapis.com"),
        ),
        "ollama" | "ollama_chat" => (Protocol::Ollama, Some("http://localhost:11434")),
        _ => return None,
    })
}

/// The environment variable holding the key of a LiteLLM provider prefix, used when a
/// deployment has no `api_key` (as LiteLLM does).
pub fn key_env(provider: &str) -> Option<&'static str> {
    Some(match provider {
        "openai" => "OPENAI_API_KEY",
        "azure" => "AZURE_API_KEY",
        "anthropic" => "ANTHROPIC_API_KEY",
        "gemini" => "GEMINI_API_KEY",
        "deepseek" => "DEEPSEEK_API_KEY",
        "openrouter" => "OPENROUTER_API_KEY",
        "dashscope" => "DASHSCOPE_API_KEY",
        "mistral" => "MISTRAL_API_KEY",
        "groq" => "GROQ_API_KEY",
        "together_ai" => "TOGETHERAI_API_KEY",
        "xai" => "XAI_API_KEY",
        "hosted_vllm" => "HOSTED_VLLM_API_KEY",
        _ => return None,
    })
}
