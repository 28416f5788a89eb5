//! Prices: what one call costs, from its usage.
//!
//! A deployment's price comes from, in order: its own `litellm_params`
//! (`input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost`, `output_cost_per_reasoning_token`); the
//! `sluice.pricing_file` (LiteLLM's `model_prices_and_context_window.json` format); the
//! built-in table below. Lookups try `model_info.base_model`, then `provider/model`, then
//! `model`. A deployment with no price gets none: its cost is recorded as NULL with
//! `pricing_missing`, never as 0. Prices are resolved once at start, not per job.
//!
//! Usage follows OpenAI's convention (cached and cache-creation tokens are inside
//! `prompt_tokens`, reasoning tokens inside `completion_tokens`), so streamed and
//! non-streamed calls with the same usage cost the same.

use std::collections::HashMap;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;
use sluice_core::config::Deployment;
use sluice_schemas::openai::Usage;

/// USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: Decimal,
    pub output: Decimal,
    /// Cached prompt tokens (defaults to `input`).
    pub cache_read: Option<Decimal>,
    /// Prompt tokens written to the cache (defaults to `input`).
    pub cache_creation: Option<Decimal>,
    /// Reasoning tokens (defaults to `output`).
    pub reasoning: Option<Decimal>,
}

impl Price {
    /// The cost of `usage` at this price.
    pub fn cost(&self, usage: &Usage) -> Decimal {
        let cached = usage.cached_tokens().min(usage.prompt_tokens);
        let created = usage
            .cache_creation_tokens()
            .min(usage.prompt_tokens - cached);
        let fresh = usage.prompt_tokens - cached - created;
        let reasoning = usage.reasoning_tokens().min(usage.completion_tokens);
        let answer = usage.completion_tokens - reasoning;
        let d = Decimal::from;
        self.input * d(fresh)
            + self.cache_read.unwrap_or(self.input) * d(cached)
            + self.cache_creation.unwrap_or(self.input) * d(created)
            + self.output * d(answer)
            + self.reasoning.unwrap_or(self.output) * d(reasoning)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read pricing file {path}: {message}")]
    Read { path: String, message: String },
}

/// One entry of LiteLLM's `model_prices_and_context_window.json`.
#[derive(Debug, Deserialize)]
struct FileEntry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
    cache_creation_input_token_cost: Option<f64>,
    output_cost_per_reasoning_token: Option<f64>,
}

fn dec(v: f64) -> Option<Decimal> {
    Decimal::from_f64_retain(v).map(|d| d.round_dp(15).normalize())
}

/// Reads a LiteLLM pricing file; entries without both token prices are skipped.
pub fn load_file(path: &Path) -> Result<HashMap<String, Price>, PricingError> {
    let err = |message: String| PricingError::Read {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut out = HashMap::new();
    for (model, v) in raw {
        let Ok(e) = serde_json::from_value::<FileEntry>(v) else {
            continue;
        };
        let (Some(i), Some(o)) = (
            e.input_cost_per_token.and_then(dec),
            e.output_cost_per_token.and_then(dec),
        ) else {
            continue;
        };
        out.insert(
            model,
            Price {
                input: i,
                output: o,
                cache_read: e.cache_read_input_token_cost.and_then(dec),
                cache_creation: e.cache_creation_input_token_cost.and_then(dec),
                reasoning: e.output_cost_per_reasoning_token.and_then(dec),
            },
        );
    }
    Ok(out)
}

/// The built-in table: list prices per million tokens (input, output, cache read,
/// cache write) as the providers published them in 2025. Override with a pricing file
/// or per deployment when they change.
/// (model, input, output, cache read, cache write), USD per million tokens.
type ListPrice = (&'static str, f64, f64, Option<f64>, Option<f64>);

const BUILTIN: &[ListPrice] = &[
    ("gpt-4o", 2.50, 10.00, Some(1.25), None),
    ("gpt-4o-mini", 0.15, 0.60, Some(0.075), None),
    ("gpt-4.1", 2.00, 8.00, Some(0.50), None),
    ("gpt-4.1-mini", 0.40, 1.60, Some(0.10), None),
    ("gpt-4.1-nano", 0.10, 0.40, Some(0.025), None),
    ("gpt-5", 1.25, 10.00, Some(0.125), None),
    ("gpt-5-mini", 0.25, 2.00, Some(0.025), None),
    ("gpt-5-nano", 0.05, 0.40, Some(0.005), None),
    ("o3", 2.00, 8.00, Some(0.50), None),
    ("o3-mini", 1.10, 4.40, Some(0.55), None),
    ("o4-mini", 1.10, 4.40, Some(0.275), None),
    ("claude-opus-4-1", 15.00, 75.00, Some(1.50), Some(18.75)),
    ("claude-opus-4", 15.00, 75.00, Some(1.50), Some(18.75)),
    ("claude-sonnet-4-5", 3.00, 15.00, Some(0.30), Some(3.75)),
    ("claude-sonnet-4", 3.00, 15.00, Some(0.30), Some(3.75)),
    ("claude-3-7-sonnet", 3.00, 15.00, Some(0.30), Some(3.75)),
    ("claude-haiku-4-5", 1.00, 5.00, Some(0.10), Some(1.25)),
    ("claude-3-5-haiku", 0.80, 4.00, Some(0.08), Some(1.00)),
    ("gemini-2.5-pro", 1.25, 10.00, Some(0.31), None),
    ("gemini-2.5-flash", 0.30, 2.50, Some(0.075), None),
    ("gemini-2.0-flash", 0.10, 0.40, Some(0.025), None),
    ("deepseek-chat", 0.27, 1.10, Some(0.07), None),
    ("deepseek-reasoner", 0.55, 2.19, Some(0.14), None),
    ("mistral-large-latest", 2.00, 6.00, None, None),
    // Embedding models: input only.
    ("text-embedding-3-small", 0.02, 0.0, None, None),
    ("text-embedding-3-large", 0.13, 0.0, None, None),
    ("text-embedding-ada-002", 0.10, 0.0, None, None),
    ("gemini-embedding-001", 0.15, 0.0, None, None),
];

/// The built-in entry for a model name: the longest known prefix (so dated snapshots
/// such as `claude-sonnet-4-20250514` find `claude-sonnet-4`).
pub fn builtin(model: &str) -> Option<Price> {
    let per_token = |m: f64| dec(m / 1_000_000.0);
    BUILTIN
        .iter()
        .filter(|(name, ..)| model == *name || model.starts_with(&format!("{name}-")))
        .max_by_key(|(name, ..)| name.len())
        .and_then(|(_, i, o, r, w)| {
            Some(Price {
                input: per_token(*i)?,
                output: per_token(*o)?,
                cache_read: r.and_then(per_token),
                cache_creation: w.and_then(per_token),
                reasoning: None,
            })
        })
}

/// Every deployment's price, resolved once.
pub struct Prices {
    by_deployment: HashMap<String, Option<Price>>,
    /// The pricing file, for wildcard deployments (`model: openai/*`), whose price
    /// depends on the model each job names.
    wildcard_file: Option<HashMap<String, Price>>,
}

impl Prices {
    pub fn resolve(deployments: &[Deployment], file: &HashMap<String, Price>) -> Prices {
        let by_deployment = deployments
            .iter()
            .map(|d| (d.id.clone(), price_of(d, file)))
            .collect();
        let wildcard_file = deployments
            .iter()
            .any(Deployment::is_wildcard)
            .then(|| file.clone());
        Prices {
            by_deployment,
            wildcard_file,
        }
    }

    pub fn get(&self, deployment: &str) -> Option<&Price> {
        self.by_deployment.get(deployment).and_then(Option::as_ref)
    }

    /// The price of the call `d` makes: its resolved price, or for a deployment of a
    /// wildcard group (its model filled in from the job) the price of that model.
    pub fn of(&self, d: &Deployment) -> Option<Price> {
        match (self.get(&d.id), &self.wildcard_file) {
            (Some(p), _) => Some(*p),
            // A wildcard template has no price of its own; the filled-in model may.
            (None, Some(file)) => price_of(d, file),
            (None, None) => None,
        }
    }

    /// USD for `usage` on `deployment`; `None` when it has no price.
    pub fn cost(&self, deployment: &str, usage: &Usage) -> Option<Decimal> {
        self.get(deployment).map(|p| p.cost(usage))
    }
}

fn price_of(d: &Deployment, file: &HashMap<String, Price>) -> Option<Price> {
    if let (Some(input), Some(output)) = (d.input_cost_per_token, d.output_cost_per_token) {
        return Some(Price {
            input,
            output,
            cache_read: d.cache_read_input_token_cost,
            cache_creation: d.cache_creation_input_token_cost,
            reasoning: d.output_cost_per_reasoning_token,
        });
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
    use sluice_schemas::openai::{CompletionTokensDetails, PromptTokensDetails};

    fn usage(prompt: u64, cached: u64, created: u64, completion: u64, reasoning: u64) -> Usage {
        let mut u = Usage::new(prompt, completion);
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(cached),
            cache_creation_tokens: Some(created),
        });
        u.completion_tokens_details = Some(CompletionTokensDetails {
            reasoning_tokens: Some(reasoning),
        });
        u
    }

    fn m(v: &str) -> Decimal {
        v.parse().unwrap()
    }

    #[test]
    fn openai_cached_prompt_tokens_cost_the_cache_price() {
        // gpt-4o-mini: 1000 prompt of which 400 cached, 200 out.
        let p = builtin("gpt-4o-mini").unwrap();
        let c = p.cost(&usage(1000, 400, 0, 200, 0));
        // 600*0.15 + 400*0.075 + 200*0.60 per million
        assert_eq!(c, m("0.00024"));
    }

    #[test]
    fn anthropic_cache_reads_and_writes_cost_their_own_prices() {
        // claude-sonnet-4 snapshot: prompt 10_000 = 2000 fresh + 6000 read + 2000 written.
        let p = builtin("claude-sonnet-4-20250514").unwrap();
        let c = p.cost(&usage(10_000, 6000, 2000, 1000, 0));
        // 2000*3 + 6000*0.30 + 2000*3.75 + 1000*15 per million
        assert_eq!(c, m("0.0303"));
    }

    #[test]
    fn reasoning_tokens_cost_the_output_price_unless_priced_apart() {
        let mut p = builtin("o4-mini").unwrap();
        let u = usage(100, 0, 0, 500, 400);
        assert_eq!(p.cost(&u), m("0.00011") + m("0.0022"));
        p.reasoning = Some(m("0.00001"));
        assert_eq!(p.cost(&u), m("0.00011") + m("0.00044") + m("0.004"));
    }

    #[test]
    fn every_protocol_has_priced_models_and_unknown_ones_have_none() {
        for model in [
            "gpt-4o",
            "claude-3-5-haiku-20241022",
            "gemini-2.5-flash",
            "deepseek-reasoner",
            "o3-mini",
        ] {
            assert!(builtin(model).is_some(), "{model}");
        }
        assert!(builtin("llama3.2").is_none());
        assert!(
            builtin("gpt-4o-mini-realtime-weird").is_some(),
            "prefix match"
        );
    }

    #[test]
    fn a_litellm_pricing_file_overrides_the_builtin_table() {
        let dir = std::env::temp_dir().join(format!("sluice-pricing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prices.json");
        std::fs::write(
            &path,
            r#"{"sample_spec": {"max_tokens": "set to max_output_tokens if provider specifies it"},
                "gpt-4o": {"input_cost_per_token": 0.000005, "output_cost_per_token": 0.00002,
                           "cache_read_input_token_cost": 0.0000025, "litellm_provider": "openai",
                           "max_input_tokens": 128000},
                "my-llama": {"input_cost_per_token": 0.0000001, "output_cost_per_token": 0.0000002}}"#,
        )
        .unwrap();
        let file = load_file(&path).unwrap();
        let c = sluice_core::Config::from_yaml(
            "model_list:
  - {model_name: a, litellm_params: {model: openai/gpt-4o}}
  - {model_name: b, litellm_params: {model: hosted_vllm/my-llama, api_base: 'http://x/v1'}}
  - {model_name: c, litellm_params: {model: hosted_vllm/other, api_base: 'http://x/v1'}}
  - {model_name: d, litellm_params: {model: openai/gpt-4o, input_cost_per_token: 0.000001, output_cost_per_token: 0.000001}}
",
            None,
            &|_: &str| None,
        )
        .unwrap();
        let prices = Prices::resolve(&c.deployments, &file);
        let id = |i: usize| c.deployments[i].id.as_str();
        assert_eq!(prices.get(id(0)).unwrap().input, m("0.000005"));
        assert_eq!(prices.get(id(1)).unwrap().output, m("0.0000002"));
        assert!(prices.get(id(2)).is_none(), "no price: cost is NULL, not 0");
        assert_eq!(
            prices.get(id(3)).unwrap().input,
            m("0.000001"),
            "the deployment's own price wins"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
