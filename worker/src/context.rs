//! Context windows: the longest prompt each deployment holds, for the pre-call checks
//! (`router_settings.enable_pre_call_checks`, applied in `job/eligible.rs`).
//!
//! A deployment's limit comes from, in order: its own `model_info.max_input_tokens`; the
//! `max_input_tokens` of its entry in `sluice.pricing_file` (LiteLLM's
//! `model_prices_and_context_window.json` format), looked up like prices
//! (`base_model`, then `provider/model`, then `model`); the built-in table below. A
//! deployment with no known limit is never skipped. Resolved once at start; a wildcard
//! deployment's (`model: openai/*`) is looked up for the model each job names.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use sluice_core::config::Deployment;

use crate::pricing::PricingError;

/// Input-token limits of well-known models (the longest matching name prefix wins, as
/// for the built-in prices in `pricing.rs`).
const BUILTIN: &[(&str, u64)] = &[
    ("gpt-4o", 128_000),
    ("gpt-4o-mini", 128_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-5", 272_000),
    ("o3", 200_000),
    ("o3-mini", 200_000),
    ("o4-mini", 200_000),
    ("claude-opus-4", 200_000),
    ("claude-sonnet-4", 200_000),
    ("claude-3-7-sonnet", 200_000),
    ("claude-haiku-4-5", 200_000),
    ("claude-3-5-haiku", 200_000),
    ("gemini-2.5-pro", 1_048_576),
    ("gemini-2.5-flash", 1_048_576),
    ("gemini-2.0-flash", 1_048_576),
    ("mistral-large-latest", 128_000),
];

fn builtin(model: &str) -> Option<u64> {
    BUILTIN
        .iter()
        .filter(|(name, _)| {
            model == *name
                || model
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(name, _)| name.len())
        .map(|(_, n)| *n)
}

#[derive(Deserialize)]
struct FileEntry {
    max_input_tokens: Option<serde_json::Value>,
}

/// The `max_input_tokens` of every entry of a LiteLLM registry file that has one.
pub fn load_file(path: &Path) -> Result<HashMap<String, u64>, PricingError> {
    let err = |message: String| PricingError::Read {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(raw
        .into_iter()
        .filter_map(|(model, v)| {
            let e = serde_json::from_value::<FileEntry>(v).ok()?;
            // The file's `sample_spec` holds a sentence here; only numbers count.
            let n = e.max_input_tokens?.as_u64()?;
            Some((model, n))
        })
        .collect())
}

/// Every deployment's context window, resolved once.
pub struct Contexts {
    by_deployment: HashMap<String, Option<u64>>,
    /// Wildcard deployments, whose limit depends on the model a job names.
    wildcard: HashSet<String>,
    file: HashMap<String, u64>,
}

impl Contexts {
    pub fn resolve(deployments: &[Deployment], file: HashMap<String, u64>) -> Contexts {
        let by_deployment = deployments
            .iter()
            .map(|d| (d.id.clone(), limit_of(d, &file)))
            .collect();
        let wildcard = deployments
            .iter()
            .filter(|d| d.is_wildcard())
            .map(|d| d.id.clone())
            .collect();
        Contexts {
            by_deployment,
            wildcard,
            file,
        }
    }

    /// The prompt tokens `d` holds, if known.
    pub fn max_input_tokens(&self, d: &Deployment) -> Option<u64> {
        if self.wildcard.contains(&d.id) {
            return limit_of(d, &self.file);
        }
        match self.by_deployment.get(&d.id) {
            Some(known) => *known,
            None => limit_of(d, &self.file),
        }
    }
}

fn limit_of(d: &Deployment, file: &HashMap<String, u64>) -> Option<u64> {
    if d.max_input_tokens.is_some() {
        return d.max_input_tokens;
    }
    let qualified = format!("{}/{}", d.provider, d.model);
    let keys: Vec<&str> = d
        .base_model
        .as_deref()
        .into_iter()
        .chain([qualified.as_str(), d.model.as_str()])
        .collect();
    keys.iter().find_map(|k| file.get(*k).copied()).or_else(|| {
        keys.iter()
            .find_map(|k| builtin(k.rsplit('/').next().unwrap_or(k)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_limit_then_registry_file_then_builtin_table() {
        let c = sluice_core::Config::from_yaml(
            "model_list:
  - {model_name: a, litellm_params: {model: openai/gpt-4o}, model_info: {id: own, max_input_tokens: 500}}
  - {model_name: b, litellm_params: {model: openai/gpt-4o}, model_info: {id: file}}
  - {model_name: c, litellm_params: {model: openai/gpt-4o-mini-2024-07-18}, model_info: {id: builtin}}
  - {model_name: d, litellm_params: {model: hosted_vllm/llama, api_base: 'http://x/v1'}, model_info: {id: unknown}}
  - {model_name: 'openai/*', litellm_params: {model: 'openai/*'}, model_info: {id: wild}}
",
            None,
            &|_: &str| None,
        )
        .unwrap();
        let file = HashMap::from([("openai/gpt-4o".to_string(), 64_000u64)]);
        let ctx = Contexts::resolve(&c.deployments, file);
        let d = |i: usize| &c.deployments[i];
        assert_eq!(ctx.max_input_tokens(d(0)), Some(500));
        assert_eq!(ctx.max_input_tokens(d(1)), Some(64_000));
        assert_eq!(ctx.max_input_tokens(d(2)), Some(128_000));
        assert_eq!(ctx.max_input_tokens(d(3)), None);
        assert_eq!(
            ctx.max_input_tokens(&d(4).for_model(&["o3"])),
            Some(200_000)
        );
        assert_eq!(
            ctx.max_input_tokens(&d(4).for_model(&["gpt-4o"])),
            Some(64_000)
        );
        assert_eq!(builtin("o3-mini-2025-01-31"), Some(200_000));
        assert_eq!(builtin("gpt-4omni"), None, "a prefix ends at a dash");
    }
}
