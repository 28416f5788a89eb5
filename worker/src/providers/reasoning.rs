//! OpenAI's reasoning models (the o-series and gpt-5, on OpenAI, Azure and the
//! compatible family), with LiteLLM's rules: `max_tokens` is sent as
//! `max_completion_tokens`, and the sampling parameters these models refuse
//! (`temperature` other than 1, `top_p`, `presence_penalty`, `frequency_penalty`,
//! `logprobs`, `top_logprobs`, `logit_bias`) are dropped with `drop_params: true`, or fail
//! the call as `bad_request` naming the parameter before anything is sent.
//!
//! Also leaves out the `thinking_blocks` an assistant turn may carry back from an
//! Anthropic answer. Used by `openai.rs` and `azure.rs`; any other request goes out
//! untouched (and uncopied).

use std::borrow::Cow;

use sluice_core::config::Deployment;
use sluice_schemas::openai::ChatRequest;

use super::error::ProviderError;
use super::params::Params;

/// Parameters of the request body (beside `temperature` and `top_p`) the models refuse.
const REFUSED: &[&str] = &[
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
];

/// Whether `d` serves a reasoning model: its `base_model` or model name (the part after
/// the last `/`) is an o-series model (`o1`, `o3-mini`, `o4-mini`, ...) or gpt-5 other
/// than `gpt-5-chat`.
pub(crate) fn is_reasoning(d: &Deployment) -> bool {
    let name = d.base_model.as_deref().unwrap_or(&d.model);
    let name = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let mut c = name.chars();
    let o_series = c.next() == Some('o') && c.next().is_some_and(|d| d.is_ascii_digit());
    o_series || (name.starts_with("gpt-5") && !name.starts_with("gpt-5-chat"))
}

/// The request as `d` must receive it.
pub(crate) fn adapt<'a>(
    d: &Deployment,
    r: &'a ChatRequest,
    params: &mut Params,
) -> Result<Cow<'a, ChatRequest>, ProviderError> {
    let signed = r.messages.iter().any(|m| m.thinking_blocks.is_some());
    let reasoning = is_reasoning(d);
    let temperature = r.temperature.filter(|t| *t != 1.0);
    let refused = REFUSED.iter().any(|k| r.extra.contains_key(*k));
    let rules = reasoning
        && (r.max_tokens.is_some() || temperature.is_some() || r.top_p.is_some() || refused);
    if !rules && !signed {
        return Ok(Cow::Borrowed(r));
    }
    let mut out = r.clone();
    // Anthropic's signed thinking of an earlier turn means nothing to this family.
    for m in &mut out.messages {
        m.thinking_blocks = None;
    }
    if !reasoning {
        return Ok(Cow::Owned(out));
    }
    if let Some(max) = out.max_tokens.take() {
        out.max_completion_tokens.get_or_insert(max);
    }
    if let Some(t) = temperature {
        params.unsupported_value("temperature", &t.to_string())?;
        out.temperature = None;
    }
    if out.top_p.take().is_some() {
        params.unsupported("top_p")?;
    }
    for key in REFUSED {
        if out.extra.remove(*key).is_some() {
            params.unsupported(key)?;
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_schemas::ErrorClass;

    fn deployment(model: &str, drop: bool) -> Deployment {
        let yaml = format!(
            "model_list:\n  - {{model_name: g, litellm_params: {{model: {model}, api_base: 'http://x/v1', drop_params: {drop}}}}}\n"
        );
        sluice_core::Config::from_yaml(&yaml, None, &|_: &str| None)
            .unwrap()
            .deployments
            .remove(0)
    }

    fn request() -> ChatRequest {
        serde_json::from_value(json!({
            "model": "g", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.5
        }))
        .unwrap()
    }

    #[test]
    fn reasoning_models_are_told_apart_from_chat_models() {
        for m in [
            "openai/o3",
            "openai/o4-mini",
            "openai/gpt-5-mini",
            "openrouter/openai/o1",
        ] {
            assert!(is_reasoning(&deployment(m, false)), "{m}");
        }
        for m in [
            "openai/gpt-4o",
            "openai/gpt-5-chat-latest",
            "deepseek/deepseek-chat",
            "openai/omni",
        ] {
            assert!(!is_reasoning(&deployment(m, false)), "{m}");
        }
    }

    #[test]
    fn drop_params_renames_max_tokens_and_drops_sampling_params() {
        let d = deployment("openai/o3-mini", true);
        let r = request();
        let mut params = Params::new(&d);
        let out = adapt(&d, &r, &mut params).unwrap();
        assert_eq!(
            (out.max_tokens, out.max_completion_tokens),
            (None, Some(50))
        );
        assert_eq!((out.temperature, out.top_p), (None, None));
        assert!(!out.extra.contains_key("presence_penalty"));
        assert_eq!(
            params.dropped(),
            ["temperature", "top_p", "presence_penalty"]
        );
        let body = serde_json::to_value(&*out).unwrap();
        assert!(body.get("max_tokens").is_none(), "{body}");
    }

    #[test]
    fn without_drop_params_the_first_refused_param_fails_the_call() {
        let d = deployment("openai/gpt-5", false);
        let r = request();
        let e = adapt(&d, &r, &mut Params::new(&d)).unwrap_err();
        assert_eq!(e.class, ErrorClass::BadRequest);
        assert!(e.message.contains("temperature: 0.2"), "{}", e.message);
        // temperature 1 is the one value these models take; max_tokens is only renamed.
        let mut ok = request();
        ok.temperature = Some(1.0);
        ok.top_p = None;
        ok.extra.clear();
        let out = adapt(&d, &ok, &mut Params::new(&d)).unwrap();
        assert_eq!(
            (out.temperature, out.max_completion_tokens),
            (Some(1.0), Some(50))
        );
    }

    #[test]
    fn chat_models_get_the_request_untouched() {
        let d = deployment("openai/gpt-4o", false);
        let r = request();
        assert!(matches!(
            adapt(&d, &r, &mut Params::new(&d)).unwrap(),
            Cow::Borrowed(_)
        ));
    }
}
