//! Native batches end to end: a Sluice batch whose lines go through the providers' own
//! batch APIs (the simulator serves OpenAI, Azure, Anthropic and Gemini on their real
//! paths), with real NATS, Postgres and Redis. Output files, per-line errors, costs at
//! batch prices in the ledger, an api restart while upstream batches run, an upstream
//! batch that fails or expires, cancel reaching upstream.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::KEY;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, BatchFault, SimConfig, SimHandle, LINE_ERROR};
use sluice_testkit::{eventually, Stack, TestEnv};

const SIM_KEY: &str = "sk-sim-native-0001";
/// Live prices of every deployment here; batch prices are half unless listed.
const LIVE_IN: &str = "0.000002";
const LIVE_OUT: &str = "0.000008";
const SETTINGS: &str =
    "  batches:\n    poll_ms: 50\n    native_poll_ms: 50\n    native_poll_max_ms: 200\n";

/// A deployment of group `group` speaking `protocol` to the simulator.
fn deployment(sim: &SimHandle, group: &str, protocol: &str, extra: &str) -> String {
    let (model, base) = match protocol {
        "openai" => ("openai/gpt-4o".to_string(), sim.api_base()),
        "azure" => (
            "azure/gpt-4o-batch".to_string(),
            format!("{}/openai/v1", sim.base()),
        ),
        "anthropic" => ("anthropic/claude-sonnet-4".to_string(), sim.base()),
        "gemini" => ("gemini/gemini-2.5-flash".to_string(), sim.base()),
        "ollama" => ("ollama/llama3.2".to_string(), sim.base()),
        other => panic!("no protocol {other}"),
    };
    format!(
        "  - model_name: {group}
    litellm_params:
      model: {model}
      api_base: {base}
      api_key: {SIM_KEY}
      input_cost_per_token: {LIVE_IN}
      output_cost_per_token: {LIVE_OUT}
{extra}    model_info:
      id: {group}-{protocol}
"
    )
}

fn models(deployments: &[String]) -> String {
    format!(
        "model_list:\n{}general_settings:\n  master_key: {KEY}\n",
        deployments.concat()
    )
}

fn sim_config() -> SimConfig {
    SimConfig {
        api_key: Some(SIM_KEY.into()),
        ..SimConfig::default()
    }
}

fn line(custom_id: &str, model: &str, text: &str) -> String {
    let v = json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 16,
                 "messages": [{"role": "user", "content": format!("{text} ({custom_id})")}]}});
    format!("{v}\n")
}

async fn upload(http: &reqwest::Client, api: &str, body: String) -> Result<String> {
    upload_as(http, api, KEY, body).await
}

async fn upload_as(http: &reqwest::Client, api: &str, key: &str, body: String) -> Result<String> {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.into_bytes()).file_name("input.jsonl"),
        );
    let v: Value = http
        .post(format!("{api}/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["id"].as_str().context("file id")?.to_string())
}

/// Uploads `input` and creates a batch with `metadata`; returns the batch object.
async fn create(
    http: &reqwest::Client,
    api: &str,
    input: String,
    metadata: Value,
) -> Result<Value> {
    create_as(http, api, KEY, input, metadata).await
}

/// [`create`] with the key `key`.
async fn create_as(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    input: String,
    metadata: Value,
) -> Result<Value> {
    let file = upload_as(http, api, key, input).await?;
    let r = http
        .post(format!("{api}/v1/batches"))
        .bearer_auth(key)
        .json(
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": metadata}),
        )
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("create batch answered {status}: {v}");
    }
    Ok(v)
}

async fn batch(http: &reqwest::Client, api: &str, id: &str) -> Result<Value> {
    Ok(http
        .get(format!("{api}/v1/batches/{id}"))
        // The master key sees every batch.
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn wait_until(
    http: &reqwest::Client,
    api: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    eventually(Duration::from_secs(60), what, || async {
        let v = batch(http, api, id).await.ok()?;
        done(&v).then_some(v)
    })
    .await
}

async fn wait_status(http: &reqwest::Client, api: &str, id: &str, status: &str) -> Result<Value> {
    wait_until(http, api, id, &format!("batch to be {status}"), |v| {
        v["status"] == status
    })
    .await
}

async fn content(http: &reqwest::Client, api: &str, file: &Value) -> Result<Vec<Value>> {
    let Some(id) = file.as_str() else {
        return Ok(Vec::new());
    };
    let text = http
        .get(format!("{api}/v1/files/{id}/content"))
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .map(|l| serde_json::from_str(l).context("output line is not JSON"))
        .collect()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

/// Every native attempt of the batch costs exactly its tokens at `input`/`output` per
/// token; returns (attempts, total cost).
async fn assert_batch_prices(
    env: &TestEnv,
    batch_id: &str,
    input: Decimal,
    output: Decimal,
) -> Result<(i64, Decimal)> {
    let store = env.store().await?;
    let rows: Vec<(i64, i64, Option<Decimal>, String)> = sqlx::query_as(
        "SELECT a.prompt_tokens, a.completion_tokens, a.cost, a.worker
         FROM job_attempts a JOIN jobs j ON j.id = a.job_id
         WHERE j.batch_id = $1 AND a.status = 'succeeded'",
    )
    .bind(batch_id)
    .fetch_all(store.pool())
    .await?;
    assert!(!rows.is_empty(), "no succeeded attempts recorded");
    let mut total = Decimal::ZERO;
    for (prompt, completion, cost, worker) in &rows {
        assert_eq!(worker, "native-batch");
        assert!(*prompt > 0 && *completion > 0, "usage recorded");
        let expected = input * Decimal::from(*prompt) + output * Decimal::from(*completion);
        let cost = cost.context("cost recorded")?;
        assert_eq!(
            cost.normalize(),
            expected.normalize(),
            "cost at batch prices"
        );
        total += cost;
    }
    // The job rows carry the same cost as their attempt.
    let job_total: Option<Decimal> = sqlx::query_scalar(
        "SELECT sum(cost) FROM jobs WHERE batch_id = $1 AND status = 'succeeded'",
    )
    .bind(batch_id)
    .fetch_one(store.pool())
    .await?;
    assert_eq!(job_total.unwrap_or_default().normalize(), total.normalize());
    Ok((rows.len() as i64, total))
}

/// One protocol end to end: `ok` lines answered upstream, one line failing on its own.
async fn one_protocol(protocol: &str) -> Result<()> {
    let sim = sim::start("127.0.0.1:0", sim_config()).await?;
    let env = TestEnv::new().await?;
    let config = env.config(&models(&[deployment(&sim, "g", protocol, "")]), SETTINGS)?;
    // No workers: nothing can run live, so every answer came through the batch API.
    let stack = Stack::start(config, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let mut input: String = (1..=5)
        .map(|i| line(&format!("req-{i}"), "g", "Name a river"))
        .collect();
    input.push_str(&line("bad-1", "g", LINE_ERROR));
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    assert_eq!(created["mode"], "native");
    let done = wait_status(&http, api, id, "completed").await?;
    assert_eq!(done["mode"], "native");
    let upstream = done["upstream"].as_array().context("upstream batches")?;
    assert_eq!(upstream.len(), 1, "{done}");
    assert_eq!(upstream[0]["protocol"], protocol);
    assert_eq!(upstream[0]["state"], "ended");
    assert!(
        upstream[0]["upstream_batch_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{done}"
    );
    assert_eq!(done["request_counts"]["completed"], 5, "{done}");
    assert_eq!(done["request_counts"]["failed"], 1, "{done}");
    assert_eq!(sim.batch_creates(), 1);

    let out = content(&http, api, &done["output_file_id"]).await?;
    assert_eq!(out.len(), 5);
    for l in &out {
        assert!(l["custom_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("req-")));
        assert_eq!(l["response"]["status_code"], 200);
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "chat.completion", "{l}");
        assert!(body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty()));
        assert!(body["usage"]["prompt_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0));
    }
    let errors = content(&http, api, &done["error_file_id"]).await?;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "bad-1");
    assert_eq!(errors[0]["response"]["status_code"], 400, "{}", errors[0]);
    assert_eq!(errors[0]["error"]["code"], "bad_request", "{}", errors[0]);

    let (n, _) = assert_batch_prices(
        &env,
        id,
        dec(LIVE_IN) / Decimal::TWO,
        dec(LIVE_OUT) / Decimal::TWO,
    )
    .await?;
    assert_eq!(n, 5);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_native_batch_answers_through_files_and_batches_at_half_price() -> Result<()> {
    one_protocol("openai").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_native_batch_answers_through_the_v1_batch_paths() -> Result<()> {
    one_protocol("azure").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_native_batch_answers_through_message_batches() -> Result<()> {
    one_protocol("anthropic").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_native_batch_answers_through_batch_mode() -> Result<()> {
    one_protocol("gemini").await
}

/// Lines of two model groups on two providers become two upstream batches; a deployment
/// listing its own batch prices is charged those; `/v1/spend?group_by=mode` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spanning_two_providers_splits_per_deployment_and_at_their_limits() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", sim_config()).await?;
    let env = TestEnv::new().await?;
    let listed = "      input_cost_per_token_batches: 0.0000003\n      output_cost_per_token_batches: 0.0000011\n";
    let models = models(&[
        deployment(&sim, "gpt", "openai", listed),
        deployment(&sim, "claude", "anthropic", ""),
    ]);
    // At most 4 lines per upstream batch: 6 Claude lines need two.
    let settings = format!("{SETTINGS}    native_max_lines: 4\n    default_mode: native\n");
    let stack = Stack::start(env.config(&models, &settings)?, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let input: String = (1..=10)
        .map(|i| {
            let group = if i % 5 == 0 || i % 5 == 1 {
                "gpt"
            } else {
                "claude"
            };
            line(&format!("req-{i}"), group, "Describe a delta")
        })
        .collect();
    // No `sluice_mode`: `default_mode: native` applies.
    let created = create(&http, api, input, json!({"purpose": "two providers"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    let done = wait_status(&http, api, id, "completed").await?;
    let upstream = done["upstream"].as_array().context("upstream")?;
    let count = |p: &str| upstream.iter().filter(|u| u["protocol"] == p).count();
    assert_eq!((count("openai"), count("anthropic")), (1, 2), "{done}");
    let lines: i64 = upstream.iter().filter_map(|u| u["lines"].as_i64()).sum();
    assert_eq!(lines, 10);
    assert!(upstream.iter().all(|u| u["lines"].as_i64() <= Some(4)));
    assert_eq!(sim.batch_creates(), 3);
    assert_eq!(done["request_counts"]["completed"], 10, "{done}");
    let out = content(&http, api, &done["output_file_id"]).await?;
    assert_eq!(out.len(), 10);

    // Costs: gpt lines at the listed batch prices, claude lines at half the live price.
    let store = env.store().await?;
    let rows: Vec<(String, i64, i64, Option<Decimal>)> = sqlx::query_as(
        "SELECT j.model_group, a.prompt_tokens, a.completion_tokens, a.cost
         FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = $1",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    assert_eq!(rows.len(), 10);
    let mut native_total = Decimal::ZERO;
    for (group, p, c, cost) in rows {
        let (i, o) = if group == "gpt" {
            (dec("0.0000003"), dec("0.0000011"))
        } else {
            (dec(LIVE_IN) / Decimal::TWO, dec(LIVE_OUT) / Decimal::TWO)
        };
        let cost = cost.context("cost")?;
        assert_eq!(
            cost.normalize(),
            (i * Decimal::from(p) + o * Decimal::from(c)).normalize()
        );
        native_total += cost;
    }
    let spend: Value = http
        .get(format!("{api}/v1/spend?group_by=mode"))
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rows = spend["data"]
        .as_array()
        .or(spend.as_array())
        .context("spend rows")?;
    let native = rows
        .iter()
        .find(|r| r["group"] == "native")
        .context("a native spend row")?;
    assert_eq!(native["calls"], 10, "{spend}");
    let reported = native["cost"].as_f64().context("cost")?;
    let expected: f64 = native_total.to_string().parse()?;
    assert!(
        (reported - expected).abs() < 1e-12,
        "{reported} vs {expected}"
    );
    stack.stop().await;
    Ok(())
}

/// The api restarts while the upstream batch runs: the new api polls the recorded
/// upstream batch and never submits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_restarted_while_upstream_batches_run_resumes_polling_without_a_second_submit(
) -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            batch_delay_ms: 2_000,
            ..sim_config()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = models(&[
        deployment(&sim, "gpt", "openai", ""),
        deployment(&sim, "gem", "gemini", ""),
    ]);
    let mut stack = Stack::start(env.config(&models, SETTINGS)?, 0).await?;
    let http = reqwest::Client::new();
    let input: String = (1..=8)
        .map(|i| {
            line(
                &format!("req-{i}"),
                if i % 2 == 0 { "gpt" } else { "gem" },
                "Hello",
            )
        })
        .collect();
    let created = create(
        &http,
        &stack.api_url,
        input,
        json!({"sluice_mode": "native"}),
    )
    .await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    let running = wait_until(
        &http,
        &stack.api_url,
        &id,
        "both upstream batches submitted",
        |v| {
            v["upstream"].as_array().is_some_and(|u| {
                u.len() == 2 && u.iter().all(|g| g["upstream_batch_id"].is_string())
            })
        },
    )
    .await?;
    assert_eq!(running["status"], "in_progress", "{running}");
    assert_eq!(sim.batch_creates(), 2);
    stack.restart_api().await?;
    let done = wait_status(&http, &stack.api_url, &id, "completed").await?;
    assert_eq!(sim.batch_creates(), 2, "no upstream batch submitted twice");
    assert_eq!(done["request_counts"]["completed"], 8, "{done}");
    let ids = |v: &Value| -> Vec<Value> {
        v["upstream"]
            .as_array()
            .map(|u| u.iter().map(|g| g["upstream_batch_id"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(&running), ids(&done), "the same upstream batches");
    let out = content(&http, &stack.api_url, &done["output_file_id"]).await?;
    let mut seen: Vec<String> = out
        .iter()
        .filter_map(|l| l["custom_id"].as_str().map(str::to_string))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every line exactly once");
    let (n, _) = assert_batch_prices(
        &env,
        &id,
        dec(LIVE_IN) / Decimal::TWO,
        dec(LIVE_OUT) / Decimal::TWO,
    )
    .await?;
    assert_eq!(n, 8, "one attempt per line, none recorded twice");
    stack.stop().await;
    Ok(())
}

/// The provider fails the upstream batch: its lines run live (the window is open), at
/// live prices, through a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_batch_reruns_its_lines_live() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            batch_fault: Some(BatchFault::Failed),
            batch_fault_first: 1,
            ..sim_config()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = models(&[deployment(&sim, "gpt", "openai", "")]);
    let stack = Stack::start(env.config(&models, SETTINGS)?, 1).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let input: String = (1..=4)
        .map(|i| line(&format!("req-{i}"), "gpt", "Hi"))
        .collect();
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    let done = wait_status(&http, api, id, "completed").await?;
    assert_eq!(done["request_counts"]["completed"], 4, "{done}");
    let g = &done["upstream"][0];
    assert_eq!(g["upstream_status"], "failed", "{done}");
    assert_eq!(g["rerun_live"], 4, "{done}");
    assert!(
        g["error"]
            .as_str()
            .is_some_and(|e| e.contains("token limit")),
        "{done}"
    );
    let store = env.store().await?;
    let workers: Vec<String> = sqlx::query_scalar(
        "SELECT a.worker FROM job_attempts a JOIN jobs j ON j.id = a.job_id
         WHERE j.batch_id = $1 AND a.status = 'succeeded'",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    assert_eq!(workers.len(), 4);
    assert!(workers.iter().all(|w| w != "native-batch"), "{workers:?}");
    stack.stop().await;
    Ok(())
}

/// An expired upstream batch with live re-runs off: its lines end `batch_expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_upstream_batch_without_live_reruns_ends_its_lines_batch_expired() -> Result<()>
{
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            batch_fault: Some(BatchFault::Expire),
            batch_fault_first: 1,
            ..sim_config()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = models(&[deployment(&sim, "claude", "anthropic", "")]);
    let settings = format!("{SETTINGS}    native_rerun_live: false\n");
    let stack = Stack::start(env.config(&models, &settings)?, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let input: String = (1..=3)
        .map(|i| line(&format!("req-{i}"), "claude", "Hi"))
        .collect();
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    let done = wait_status(&http, api, id, "completed").await?;
    assert_eq!(done["request_counts"]["failed"], 3, "{done}");
    let errors = content(&http, api, &done["error_file_id"]).await?;
    assert_eq!(errors.len(), 3);
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "batch_expired"),
        "{errors:?}"
    );
    stack.stop().await;
    Ok(())
}

/// Cancelling a native batch cancels its upstream batch; its lines end cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_upstream_batch() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            batch_fault: Some(BatchFault::Slow),
            batch_fault_first: u64::MAX,
            ..sim_config()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = models(&[deployment(&sim, "gem", "gemini", "")]);
    let stack = Stack::start(env.config(&models, SETTINGS)?, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let input: String = (1..=3)
        .map(|i| line(&format!("req-{i}"), "gem", "Hi"))
        .collect();
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    wait_until(&http, api, id, "upstream batch submitted", |v| {
        v["upstream"][0]["upstream_batch_id"].is_string()
    })
    .await?;
    http.post(format!("{api}/v1/batches/{id}/cancel"))
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?;
    let done = wait_status(&http, api, id, "cancelled").await?;
    assert_eq!(sim.batch_cancels(), 1);
    assert_eq!(
        done["upstream"][0]["upstream_status"], "cancelled",
        "{done}"
    );
    let errors = content(&http, api, &done["error_file_id"]).await?;
    assert_eq!(errors.len(), 3);
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled"),
        "{errors:?}"
    );
    stack.stop().await;
    Ok(())
}

/// `auto` goes native only when every deployment has a batch API; an unknown
/// `sluice_mode` is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_runs_live_when_a_deployment_has_no_batch_api() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", sim_config()).await?;
    let env = TestEnv::new().await?;
    let models = models(&[
        deployment(&sim, "gpt", "openai", ""),
        deployment(&sim, "local", "ollama", ""),
    ]);
    let settings = format!("{SETTINGS}    default_mode: auto\n");
    let stack = Stack::start(env.config(&models, &settings)?, 1).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let native_only: String = (1..=2)
        .map(|i| line(&format!("a-{i}"), "gpt", "Hi"))
        .collect();
    let a = create(&http, api, native_only, json!({})).await?;
    let mixed = format!("{}{}", line("b-1", "gpt", "Hi"), line("b-2", "local", "Hi"));
    let b = create(&http, api, mixed, json!({})).await?;
    let a = wait_status(&http, api, a["id"].as_str().context("id")?, "completed").await?;
    let b = wait_status(&http, api, b["id"].as_str().context("id")?, "completed").await?;
    assert_eq!(a["mode"], "native", "{a}");
    assert_eq!(b["mode"], "live", "{b}");
    assert!(b.get("upstream").is_none(), "{b}");
    assert_eq!(b["request_counts"]["completed"], 2, "{b}");
    assert_eq!(sim.batch_creates(), 1);

    let file = upload(&http, api, line("c-1", "gpt", "Hi")).await?;
    let r = http
        .post(format!("{api}/v1/batches"))
        .bearer_auth(KEY)
        .json(
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"sluice_mode": "cheap"}}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["param"], "metadata.sluice_mode", "{v}");
    stack.stop().await;
    Ok(())
}

/// Submits one live chat job of `group` with `key`; returns its id.
async fn live_job(http: &reqwest::Client, api: &str, key: &str, group: &str) -> Result<String> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(key)
        .json(&json!({"model": group, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Name a lake"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["id"].as_str().context("job id")?.to_string())
}

/// A budget's spent counter in Redis, as admission reads it.
async fn redis_spent(env: &TestEnv, subject: &str) -> Result<f64> {
    use deadpool_redis::redis;
    let client = redis::Client::open(env.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let v: Option<String> = redis::cmd("GET")
        .arg(format!("{{{}}}:bud:{subject}:spent", env.prefix))
        .query_async(&mut conn)
        .await?;
    Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0.0))
}

/// Budgets see native spend as they see live spend: after a live call (which puts the
/// budgets in Redis), a native batch at listed batch prices exhausts the provider budget;
/// the provider's and the key's counters then hold exactly the ledger's spend, and the
/// next live job of that provider waits for the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_spend_is_charged_to_budgets_and_holds_back_live_jobs() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", sim_config()).await?;
    let env = TestEnv::new().await?;
    // Every native line costs well over the provider budget on its own; one live call
    // (about 20 tokens in, 16 out at live prices) well under it.
    let listed =
        "      input_cost_per_token_batches: 0.0001\n      output_cost_per_token_batches: 0.0004\n";
    let models = models(&[deployment(&sim, "gpt", "openai", listed)]).replace(
        "general_settings:",
        "router_settings:\n  provider_budget_config:\n    openai: {budget_limit: 0.001, time_period: 1d}\ngeneral_settings:",
    );
    let settings = format!("{SETTINGS}  limits:\n    max_defer_secs: 1\n");
    let stack = Stack::start(env.config(&models, &settings)?, 1).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let created: Value = http
        .post(format!("{api}/v1/keys"))
        .bearer_auth(KEY)
        .json(&json!({"name": "bulk", "max_budget": 100, "budget_duration": "1d"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = created["key"].as_str().context("key")?.to_string();
    let key_id = created["id"].as_str().context("key id")?.to_string();

    let first = live_job(&http, api, &key, "gpt").await?;
    let first = common::wait_job(&http, api, &first, &key).await?;
    assert_eq!(first["status"], "succeeded", "{first}");

    let input: String = (1..=3)
        .map(|i| line(&format!("req-{i}"), "gpt", "Name a river"))
        .collect();
    let created = create_as(&http, api, &key, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    let done = wait_status(&http, api, id, "completed").await?;
    assert_eq!(done["request_counts"]["completed"], 3, "{done}");
    let (n, native) = assert_batch_prices(&env, id, dec("0.0001"), dec("0.0004")).await?;
    assert_eq!(n, 3);
    let native: f64 = native.to_string().parse()?;
    assert!(native > 0.001, "the native batch alone exhausts the budget");

    // The counters hold the ledger's spend: the live call's and the native lines'.
    let store = env.store().await?;
    let ledger: f64 = sqlx::query_scalar::<_, Option<f64>>(
        "SELECT sum(cost)::float8 FROM job_attempts WHERE provider = 'openai'",
    )
    .fetch_one(store.pool())
    .await?
    .unwrap_or(0.0);
    assert!(ledger > native, "the live call is in the ledger too");
    for subject in ["provider:openai".to_string(), format!("key:{key_id}")] {
        let counted = redis_spent(&env, &subject).await?;
        assert!(
            (counted - ledger).abs() < 1e-9,
            "{subject}: Redis counts {counted}, the ledger {ledger}"
        );
    }

    // A live job of the same provider (another key) now waits for the budget.
    let calls = sim.requests();
    let next = live_job(&http, api, KEY, "gpt").await?;
    let status = eventually(
        Duration::from_secs(30),
        "the live job to run or wait",
        || async {
            let (status, waits): (String, bool) = sqlx::query_as(
                "SELECT status, not_before IS NOT NULL FROM jobs WHERE id = $1::uuid",
            )
            .bind(&next)
            .fetch_one(store.pool())
            .await
            .ok()?;
            (status != "queued" || waits).then_some(status)
        },
    )
    .await?;
    assert_eq!(
        status, "queued",
        "the live job waits for the provider budget"
    );
    assert_eq!(sim.requests(), calls, "no live call past the budget");
    stack.stop().await;
    Ok(())
}

/// The provider's enqueued-token limit (the simulator fails a batch that would take the
/// queue past it, as OpenAI does): the driver cuts upstream batches to the deployment's
/// limit and holds each back until the earlier ones ended, so none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_batches_stay_under_the_enqueued_token_limit() -> Result<()> {
    const LIMIT: u64 = 30;
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            batch_delay_ms: 300,
            batch_enqueued_tokens: Some(LIMIT),
            ..sim_config()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let limit = format!("      batch_enqueued_tokens: {LIMIT}\n");
    let models = models(&[deployment(&sim, "gpt", "openai", &limit)]);
    // No live re-runs and no workers: a batch the provider failed would fail its lines.
    let settings = format!("{SETTINGS}    native_rerun_live: false\n");
    let stack = Stack::start(env.config(&models, &settings)?, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    // About 10 prompt tokens a line: the six lines hold twice the limit.
    let input: String = (1..=6)
        .map(|i| line(&format!("req-{i}"), "gpt", "Name a river"))
        .collect();
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    let done = wait_status(&http, api, id, "completed").await?;
    assert_eq!(done["request_counts"]["completed"], 6, "{done}");
    assert_eq!(
        sim.batch_over_limit(),
        0,
        "no upstream batch past the limit"
    );
    let upstream = done["upstream"].as_array().context("upstream")?;
    assert!(upstream.len() >= 2, "split at the limit: {done}");
    assert_eq!(sim.batch_creates(), upstream.len() as u64);
    for u in upstream {
        assert_eq!(u["upstream_status"], "completed", "{done}");
        let tokens = u["tokens"].as_u64().context("tokens")?;
        assert!(tokens > 0 && tokens <= LIMIT, "{done}");
    }
    stack.stop().await;
    Ok(())
}

/// The api process is killed while its create call is in flight: the provider made the
/// upstream batch, its answer never arrived. The next api looks the batch up (Gemini by
/// display name, Anthropic by request count and creation time, OpenAI by metadata) and
/// follows it instead of creating a second one.
async fn api_killed_during_create(protocol: &str) -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            // Far beyond the kill: the first create's answer never reaches anyone.
            batch_create_delay_ms: 20_000,
            ..sim_config()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = models(&[deployment(&sim, "g", protocol, "")]);
    let settings = format!("{SETTINGS}    lease_secs: 1\n");
    let path = env.write_config(&models, &settings)?;
    let port = sluice_testkit::servers::free_port();
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .arg("api")
        .env("SLUICE_API_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .env_remove("SLUICE_MASTER_KEY")
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let doomed_url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "api ready", || async {
        let r = http.get(format!("{doomed_url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    let input: String = (1..=3)
        .map(|i| line(&format!("req-{i}"), "g", "Name a lake"))
        .collect();
    let created = create(&http, &doomed_url, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    eventually(
        Duration::from_secs(30),
        "the create call upstream",
        || async { (sim.batch_creates() == 1).then_some(()) },
    )
    .await?;
    doomed.kill().await?;

    let stack = Stack::start(env.config(&models, &settings)?, 0).await?;
    let done = wait_status(&http, &stack.api_url, &id, "completed").await?;
    assert_eq!(sim.batch_creates(), 1, "exactly one upstream batch: {done}");
    assert_eq!(done["request_counts"]["completed"], 3, "{done}");
    let upstream = done["upstream"].as_array().context("upstream")?;
    assert_eq!(upstream.len(), 1, "{done}");
    assert_eq!(upstream[0]["upstream_status"], "completed", "{done}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_create_cut_off_by_an_api_kill_is_found_not_repeated() -> Result<()> {
    api_killed_during_create("anthropic").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_create_cut_off_by_an_api_kill_is_found_not_repeated() -> Result<()> {
    api_killed_during_create("gemini").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_create_cut_off_by_an_api_kill_is_found_not_repeated() -> Result<()> {
    api_killed_during_create("openai").await
}

/// Native line jobs end on NATS as live line jobs do: each line's event subject carries
/// one terminal event (`done` with the completion, usage and cost, or `error` with the
/// line's error), attempt 1, and the job row agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_lines_publish_the_terminal_events_live_lines_do() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", sim_config()).await?;
    let env = TestEnv::new().await?;
    let models = models(&[deployment(&sim, "g", "anthropic", "")]);
    let stack = Stack::start(env.config(&models, SETTINGS)?, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let mut input: String = (1..=2)
        .map(|i| line(&format!("req-{i}"), "g", "Name a sea"))
        .collect();
    input.push_str(&line("bad-1", "g", LINE_ERROR));
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    wait_status(&http, api, id, "completed").await?;
    let store = env.store().await?;
    let rows: Vec<(uuid::Uuid, String, String, Option<Decimal>)> = sqlx::query_as(
        "SELECT id, custom_id, status, cost FROM jobs WHERE batch_id = $1 ORDER BY batch_line",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    assert_eq!(rows.len(), 3);
    for (job, custom_id, status, cost) in rows {
        let events = common::read_events(&env, &job.to_string()).await?;
        assert_eq!(events.len(), 1, "{custom_id}: one event, the terminal one");
        let end = &events[0];
        assert_eq!(end.attempt, 1, "{custom_id}");
        assert_eq!(end.body["job_id"], job.to_string());
        assert_eq!(end.body["status"], status.as_str(), "{custom_id}");
        assert_eq!(end.body["attempts"], 1);
        if custom_id.starts_with("req-") {
            assert_eq!(end.kind, "done", "{custom_id}");
            assert_eq!(
                end.body["result"]["object"], "chat.completion",
                "{:?}",
                end.body
            );
            assert!(end.body["result"]["choices"][0]["message"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty()));
            assert!(end.body["usage"]["prompt_tokens"]
                .as_u64()
                .is_some_and(|n| n > 0));
            let sent: f64 = end.body["cost"].as_f64().context("cost")?;
            let recorded: f64 = cost.context("cost recorded")?.to_string().parse()?;
            assert!((sent - recorded).abs() < 1e-12, "{sent} vs {recorded}");
        } else {
            assert_eq!(end.kind, "error", "{custom_id}");
            assert_eq!(end.body["error"]["class"], "bad_request", "{:?}", end.body);
            assert!(end.body.get("result").is_none());
        }
    }
    stack.stop().await;
    Ok(())
}

/// Tag routing places native lines as it places live ones: a line asking for `west`
/// (in `body.tags` or `body.metadata.tags`) goes to the deployment tagged `west` even
/// though routing prefers the other (`order`), one asking for nothing to the preferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_route_native_lines_as_they_route_live_ones() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", sim_config()).await?;
    let env = TestEnv::new().await?;
    let models = models(&[
        deployment(&sim, "g", "openai", "      tags: [east, default]\n"),
        deployment(
            &sim,
            "g",
            "anthropic",
            "      tags: [west]\n      order: 1\n",
        ),
    ])
    .replace(
        "general_settings:",
        "router_settings:\n  enable_tag_filtering: true\ngeneral_settings:",
    );
    let stack = Stack::start(env.config(&models, SETTINGS)?, 0).await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let tagged = |custom_id: &str, field: &str| {
        let mut body = json!({"model": "g", "max_tokens": 16,
            "messages": [{"role": "user", "content": format!("Hi ({custom_id})")}]});
        match field {
            "tags" => body["tags"] = json!(["west"]),
            "metadata" => body["metadata"] = json!({"tags": ["west"]}),
            _ => {}
        }
        let v = json!({"custom_id": custom_id, "method": "POST",
            "url": "/v1/chat/completions", "body": body});
        format!("{v}\n")
    };
    let input = [
        tagged("west-1", "tags"),
        tagged("west-2", "metadata"),
        tagged("plain-1", ""),
        tagged("plain-2", ""),
    ]
    .concat();
    let created = create(&http, api, input, json!({"sluice_mode": "native"})).await?;
    let id = created["id"].as_str().context("batch id")?;
    let done = wait_status(&http, api, id, "completed").await?;
    assert_eq!(done["request_counts"]["completed"], 4, "{done}");
    let store = env.store().await?;
    let placed: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.custom_id, a.deployment FROM jobs j JOIN job_attempts a ON a.job_id = j.id
         WHERE j.batch_id = $1 ORDER BY j.custom_id",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    let expected: Vec<(String, String)> = [
        ("plain-1", "g-openai"),
        ("plain-2", "g-openai"),
        ("west-1", "g-anthropic"),
        ("west-2", "g-anthropic"),
    ]
    .iter()
    .map(|(c, d)| (c.to_string(), d.to_string()))
    .collect();
    assert_eq!(placed, expected, "{done}");
    stack.stop().await;
    Ok(())
}
