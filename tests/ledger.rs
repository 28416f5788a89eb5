//! The cost ledger end to end: built-in prices, streamed = non-streamed, missing prices.

mod common;

use anyhow::Result;
use common::{wait_job, KEY};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{Stack, TestEnv};

async fn run(http: &reqwest::Client, api: &str, model: &str, stream: bool) -> Result<Value> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "price this call"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    wait_job(http, api, v["id"].as_str().unwrap(), KEY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_non_streamed_calls_cost_the_same_at_built_in_prices_and_unpriced_is_null(
) -> Result<()> {
    let s = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 12,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let yaml = format!(
        "model_list:
  - {{model_name: mini, litellm_params: {{model: openai/gpt-4o-mini, api_base: '{base}'}}}}
  - {{model_name: local, litellm_params: {{model: hosted_vllm/my-local-model, api_base: '{base}'}}}}
general_settings: {{master_key: {KEY}}}
",
        base = s.api_base()
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();

    let streamed = run(&http, &stack.api_url, "mini", true).await?;
    let whole = run(&http, &stack.api_url, "mini", false).await?;
    assert_eq!(
        streamed["usage"]["prompt_tokens"],
        whole["usage"]["prompt_tokens"]
    );
    assert_eq!(streamed["usage"]["completion_tokens"], 12);
    let cost = |v: &Value| -> Decimal { v["cost"].to_string().parse().unwrap() };
    assert_eq!(
        cost(&streamed),
        cost(&whole),
        "streamed calls are priced like whole ones"
    );
    // gpt-4o-mini list price: $0.15 in, $0.60 out per million tokens.
    let p = Decimal::from(streamed["usage"]["prompt_tokens"].as_u64().unwrap());
    let expected = p * Decimal::new(15, 8) + Decimal::from(12) * Decimal::new(60, 8);
    assert_eq!(cost(&streamed), expected);
    assert_eq!(streamed["pricing_missing"], false);

    let unpriced = run(&http, &stack.api_url, "local", false).await?;
    assert_eq!(unpriced["status"], "succeeded");
    assert!(unpriced["cost"].is_null(), "never a silent 0: {unpriced}");
    assert_eq!(unpriced["pricing_missing"], true);
    assert!(unpriced["attempt_log"][0]["cost"].is_null());
    assert_eq!(unpriced["attempt_log"][0]["pricing_missing"], true);

    // The spend report adds up the same ledger.
    let spend: Value = http
        .get(format!("{}/v1/spend?group_by=model", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    let rows = spend["data"].as_array().unwrap();
    let mini = rows.iter().find(|r| r["group"] == "mini").unwrap();
    assert_eq!(mini["calls"], 2);
    let mini_cost: Decimal = mini["cost"].to_string().parse()?;
    assert_eq!(mini_cost, cost(&streamed) + cost(&whole));
    let local = rows.iter().find(|r| r["group"] == "local").unwrap();
    assert_eq!(local["unpriced_calls"], 1);
    assert_eq!(spend["unpriced_calls"], 1);
    let by_day: Value = http
        .get(format!("{}/v1/spend?group_by=day", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(by_day["data"].as_array().unwrap().len(), 1);
    let bad = http
        .get(format!("{}/v1/spend?group_by=color", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "spend",
            "--group-by",
            "provider",
            "--api-url",
            &stack.api_url,
            "--key",
            KEY,
        ])
        .output()
        .await?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("openai") && table.contains("total $"),
        "{table}"
    );
    stack.stop().await;
    Ok(())
}
