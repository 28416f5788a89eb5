//! Batch prices. A deployment's batch price comes from, in order: its own
//! `input_cost_per_token_batches` / `output_cost_per_token_batches`; the pricing file's
//! entries of the same names (LiteLLM's `model_prices_and_context_window.json`); else half
//! the live price (`crate::pricing`), which is what OpenAI, Azure, Anthropic and Gemini
//! publish for their batch APIs. Cache prices are halved with the rest, as LiteLLM's
//! `batch_cost_calculator` does.

use std::collections::HashMap;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;
use sluice_core::config::Deployment;

use crate::pricing::{price_of, Price, PricingError};

/// A pricing file's live prices and the batch prices it lists.
#[derive(Debug, Default)]
pub struct PriceFile {
    live: HashMap<String, Price>,
    batch: HashMap<String, (Decimal, Decimal)>,
}

#[derive(Debug, Deserialize)]
struct BatchEntry {
    input_cost_per_token_batches: Option<f64>,
    output_cost_per_token_batches: Option<f64>,
}

fn dec(v: f64) -> Option<Decimal> {
    Decimal::from_f64_retain(v).map(|d| d.round_dp(15).normalize())
}

/// Reads a LiteLLM pricing file: its live prices and its batch prices.
pub fn load(path: &Path) -> Result<PriceFile, PricingError> {
    let live = crate::pricing::load_file(path)?;
    let err = |message: String| PricingError::Read {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let batch = raw
        .into_iter()
        .filter_map(|(model, v)| {
            let e: BatchEntry = serde_json::from_value(v).ok()?;
            let i = e.input_cost_per_token_batches.and_then(dec)?;
            let o = e.output_cost_per_token_batches.and_then(dec)?;
            Some((model, (i, o)))
        })
        .collect();
    Ok(PriceFile { live, batch })
}

/// What one token costs through `d`'s batch API; `None` when nothing prices `d`.
pub fn batch_price(d: &Deployment, file: &PriceFile) -> Option<Price> {
    let live = price_of(d, &file.live);
    let half = |p: Decimal| p / Decimal::TWO;
    let listed = match (
        d.input_cost_per_token_batches,
        d.output_cost_per_token_batches,
    ) {
        (Some(i), Some(o)) => Some((i, o)),
        _ => {
            let qualified = format!("{}/{}", d.provider, d.model);
            let found = d
                .base_model
                .as_deref()
                .into_iter()
                .chain([qualified.as_str(), d.model.as_str()])
                .find_map(|k| file.batch.get(k).copied());
            found
        }
    };
    match (listed, live) {
        (Some((input, output)), live) => Some(Price {
            input,
            output,
            cache_read: live.and_then(|l| l.cache_read).map(half),
            cache_creation: live.and_then(|l| l.cache_creation).map(half),
            reasoning: live.and_then(|l| l.reasoning).map(half),
        }),
        (None, Some(l)) => Some(Price {
            input: half(l.input),
            output: half(l.output),
            cache_read: l.cache_read.map(half),
            cache_creation: l.cache_creation.map(half),
            reasoning: l.reasoning.map(half),
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Config;

    fn deployment(params: &str) -> Deployment {
        let yaml = format!(
            "model_list:\n  - model_name: g\n    litellm_params: {{model: openai/gpt-4o, {params}}}\n"
        );
        Config::from_yaml(&yaml, None, &|_: &str| None)
            .unwrap()
            .deployments
            .remove(0)
    }

    #[test]
    fn listed_batch_prices_win_else_half_the_live_price() {
        let d = deployment("input_cost_per_token_batches: 0.000001, output_cost_per_token_batches: 0.000003, input_cost_per_token: 0.00001, output_cost_per_token: 0.00003");
        let p = batch_price(&d, &PriceFile::default()).unwrap();
        assert_eq!(p.input, "0.000001".parse::<Decimal>().unwrap());
        assert_eq!(p.output, "0.000003".parse::<Decimal>().unwrap());
        let d = deployment("input_cost_per_token: 0.00001, output_cost_per_token: 0.00003");
        let p = batch_price(&d, &PriceFile::default()).unwrap();
        assert_eq!(p.input, "0.000005".parse::<Decimal>().unwrap());
        assert_eq!(p.output, "0.000015".parse::<Decimal>().unwrap());
        // Built-in gpt-4o: 2.50 / 10.00 per million live, 1.25 / 5.00 in a batch.
        let d = deployment("api_key: x");
        let p = batch_price(&d, &PriceFile::default()).unwrap();
        assert_eq!(p.input * Decimal::from(1_000_000), Decimal::new(125, 2));
        assert_eq!(p.output * Decimal::from(1_000_000), Decimal::from(5));
    }

    #[test]
    fn a_pricing_file_lists_batch_prices() {
        let path = std::env::temp_dir().join(format!(
            "sluice-batch-prices-{}-{}.json",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::write(
            &path,
            r#"{"gpt-4o": {"input_cost_per_token": 0.0000025, "output_cost_per_token": 0.00001,
                "input_cost_per_token_batches": 0.000001, "output_cost_per_token_batches": 0.000004}}"#,
        )
        .unwrap();
        let file = load(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let p = batch_price(&deployment("api_key: x"), &file).unwrap();
        assert_eq!(p.input, "0.000001".parse::<Decimal>().unwrap());
        assert_eq!(p.output, "0.000004".parse::<Decimal>().unwrap());
    }
}
