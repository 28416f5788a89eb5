//! LiteLLM router keys end to end (api + workers + NATS + Redis + Postgres + simulator):
//! pre-call context checks, tag routing, wildcard groups, provider keys from the
//! environment, the reasoning-model rules of `drop_params`, `model_group_retry_policy`
//! and `allowed_fails_policy`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{wait_job, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, Fault, SimConfig, SimHandle};
use sluice_testkit::{Stack, TestEnv};

/// One `model_list` entry on `sim` (OpenAI protocol).
fn deployment(group: &str, id: &str, sim: &SimHandle, params: &str, info: &str) -> String {
    format!(
        "  - model_name: '{group}'
    litellm_params: {{model: openai/sim-model, api_base: '{}', api_key: sk-test-0001{params}}}
    model_info: {{id: {id}{info}}}
",
        sim.api_base()
    )
}

fn config(deployments: &[String], router: &str) -> String {
    format!(
        "model_list:\n{}router_settings:\n{router}\ngeneral_settings: {{master_key: {KEY}}}\n",
        deployments.concat()
    )
}

async fn submit(http: &reqwest::Client, api: &str, body: Value) -> Result<String> {
    let r = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "submit failed: {status} {v}");
    Ok(v["id"].as_str().context("no id")?.to_string())
}

async fn run(http: &reqwest::Client, api: &str, body: Value) -> Result<Value> {
    let id = submit(http, api, body).await?;
    wait_job(http, api, &id, KEY).await
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": text}]})
}

fn deployments_called(job: &Value) -> Vec<String> {
    job["attempt_log"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["deployment"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// About 1,000 tokens by any count.
fn long_prompt() -> String {
    "The river bends past the old mill and on towards the sea. ".repeat(80)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_prompts_are_kept_off_a_small_context_deployment_and_fail_context_window_when_nothing_fits(
) -> Result<()> {
    let small = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let big = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            // Same order and weight: only the check keeps long prompts off `small`.
            deployment("g", "small", &small, "", ", max_input_tokens: 200"),
            deployment("g", "big", &big, "", ", max_input_tokens: 100000"),
            deployment("tiny", "tiny-1", &small, "", ", max_input_tokens: 200"),
            deployment("lonely", "lonely-1", &small, "", ", max_input_tokens: 200"),
        ],
        "  enable_pre_call_checks: true\n  context_window_fallbacks: [{tiny: [g]}]",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 2).await?;
    let http = reqwest::Client::new();

    for i in 0..6 {
        let job = run(
            &http,
            &stack.api_url,
            ask("g", &format!("{i} {}", long_prompt())),
        )
        .await?;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(deployments_called(&job), ["big"], "{job}");
    }
    assert_eq!(
        small.requests(),
        0,
        "no long prompt reached the small deployment"
    );

    // A group where nothing fits follows its context_window_fallbacks, without a call.
    let job = run(&http, &stack.api_url, ask("tiny", &long_prompt())).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(deployments_called(&job), ["big"], "{job}");

    // Nothing fits anywhere: the job fails context_window and no provider is called.
    let before = (small.requests(), big.requests());
    let job = run(&http, &stack.api_url, ask("lonely", &long_prompt())).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "context_window", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Max Input Tokens=200")),
        "{job}"
    );
    assert_eq!(deployments_called(&job), Vec::<String>::new());
    assert_eq!((small.requests(), big.requests()), before);

    // A short prompt still fits the small one.
    let job = run(&http, &stack.api_url, ask("lonely", "Hi")).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(small.requests(), before.0 + 1);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tagged_jobs_go_to_deployments_with_their_tags_and_untagged_ones_to_default() -> Result<()>
{
    let paid = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let free = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let fallback = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("g", "paid", &paid, ", tags: [paid]", ""),
            deployment("g", "free", &free, ", tags: [free]", ""),
            deployment("g", "dflt", &fallback, ", tags: [default]", ""),
            deployment("strict", "strict-paid", &paid, ", tags: [paid]", ""),
        ],
        "  enable_tag_filtering: true",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 2).await?;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let mut body = ask("g", "tagged");
        body["tags"] = json!(["paid"]);
        let job = run(&http, &stack.api_url, body).await?;
        assert_eq!(deployments_called(&job), ["paid"], "{job}");

        let mut body = ask("g", "tagged in metadata");
        body["metadata"] = json!({"tags": ["free"]});
        let job = run(&http, &stack.api_url, body).await?;
        assert_eq!(deployments_called(&job), ["free"], "{job}");

        let job = run(&http, &stack.api_url, ask("g", "untagged")).await?;
        assert_eq!(deployments_called(&job), ["dflt"], "{job}");

        let mut body = ask("g", "unknown tag");
        body["tags"] = json!(["gpu"]);
        let job = run(&http, &stack.api_url, body).await?;
        assert_eq!(deployments_called(&job), ["dflt"], "{job}");
    }
    // `tags` is Sluice's (LiteLLM's) routing field: no provider sees it.
    let (_, sent) = paid.last_request().context("paid saw no request")?;
    assert!(sent.get("tags").is_none(), "{sent}");

    // No deployment with the tag and no default: the job fails before any call.
    let calls = paid.requests();
    let mut body = ask("strict", "unknown tag");
    body["tags"] = json!(["gpu"]);
    let job = run(&http, &stack.api_url, body).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "bad_request", "{job}");
    assert_eq!(paid.requests(), calls);

    // Tags that are not a list of strings are refused at the door, naming the field.
    let mut body = ask("g", "bad tags");
    body["tags"] = json!("paid");
    let r = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["param"], "tags", "{v}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wildcard_group_calls_the_model_the_job_named_and_prices_it() -> Result<()> {
    let openai = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let anything = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = format!(
        "model_list:
  - model_name: 'openai/*'
    litellm_params: {{model: 'openai/*', api_base: '{}', api_key: sk-test-0001}}
    model_info: {{id: openai-any}}
  - model_name: '*'
    litellm_params: {{model: 'hosted_vllm/*', api_base: '{}'}}
    model_info: {{id: catch-all}}
general_settings: {{master_key: {KEY}}}
",
        openai.api_base(),
        anything.api_base()
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();

    let job = run(&http, &stack.api_url, ask("openai/gpt-4o-mini", "hello")).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(deployments_called(&job), ["openai-any"]);
    let (_, sent) = openai.last_request().context("no request")?;
    assert_eq!(sent["model"], "gpt-4o-mini");
    // Priced as the model it called (the built-in gpt-4o-mini price).
    assert!(job["cost"].as_f64().is_some_and(|c| c > 0.0), "{job}");

    let job = run(&http, &stack.api_url, ask("my-local-llama", "hello")).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(deployments_called(&job), ["catch-all"]);
    let (_, sent) = anything.last_request().context("no request")?;
    assert_eq!(sent["model"], "my-local-llama");
    assert_eq!(openai.requests(), 1);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_without_api_key_uses_the_provider_env_var_and_no_log_shows_it() -> Result<()>
{
    const ENV_KEY: &str = "sk-from-env-9f8e7d6c5b4a39281706";
    // The simulator answers 401 to any other key.
    let openai = sim::start(
        "127.0.0.1:0",
        SimConfig {
            api_key: Some(ENV_KEY.into()),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = format!(
        "model_list:
  - model_name: g
    litellm_params: {{model: openai/gpt-4o-mini, api_base: '{}'}}
    model_info: {{id: env-key}}
router_settings:
  enable_pre_call_checks: true
general_settings:
  master_key: {KEY}
  proxy_batch_write_at: 60
",
        openai.api_base()
    );
    // The api runs here (it needs no provider key); the worker is a process with the key
    // in its environment and debug logs captured.
    let stack = Stack::start(env.config(&models, "")?, 0).await?;
    let path = env.write_config(&models, "")?;
    let log_path = env.dir.join("worker.log");
    let log = std::fs::File::create(&log_path)?;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("worker")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .env("OPENAI_API_KEY", ENV_KEY)
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("SLUICE_METRICS_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let job = run(&http, &stack.api_url, ask("g", "who am I?")).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        openai.requests(),
        1,
        "the simulator accepted the key at once"
    );
    worker.start_kill()?;
    let _ = tokio::time::timeout(Duration::from_secs(10), worker.wait()).await;
    stack.stop().await;

    let logs = std::fs::read_to_string(&log_path)?;
    assert!(
        logs.contains("worker started"),
        "the log was captured: {logs}"
    );
    assert!(
        !logs.contains(ENV_KEY),
        "the key leaked into the worker's log"
    );
    // The worker names the keys it does not act on, and only those.
    let warning = logs
        .lines()
        .find(|l| l.contains("config keys Sluice does not act on"))
        .context("no not-acted-on warning from the worker")?;
    assert!(
        warning.contains("general_settings.proxy_batch_write_at"),
        "{warning}"
    );
    assert!(!warning.contains("enable_pre_call_checks"), "{warning}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reasoning_models_get_max_completion_tokens_and_no_sampling_params() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = format!(
        "model_list:
  - model_name: o
    litellm_params: {{model: openai/o3-mini, api_base: '{base}/v1', api_key: sk-test-0001, drop_params: true}}
    model_info: {{id: o3}}
  - model_name: az
    litellm_params: {{model: azure/my-reasoner, api_base: '{base}', api_version: '2024-12-01-preview', api_key: sk-test-0001, drop_params: true}}
    model_info: {{id: azure-o4, base_model: azure/o4-mini}}
  - model_name: strict
    litellm_params: {{model: openai/gpt-5-mini, api_base: '{base}/v1', api_key: sk-test-0001}}
    model_info: {{id: strict}}
general_settings: {{master_key: {KEY}}}
",
        base = sim.base()
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 40, "temperature": 0.3, "top_p": 0.5,
               "presence_penalty": 0.1, "messages": [{"role": "user", "content": "think"}]})
    };
    for (group, path) in [
        ("o", "/v1/chat/completions"),
        ("az", "/openai/deployments/my-reasoner/chat/completions"),
    ] {
        let job = run(&http, &stack.api_url, body(group)).await?;
        assert_eq!(job["status"], "succeeded", "{job}");
        let (sent_path, sent) = sim.last_request().context("no request")?;
        assert!(sent_path.starts_with(path), "{sent_path}");
        assert_eq!(sent["max_completion_tokens"], 40, "{sent}");
        for refused in ["max_tokens", "temperature", "top_p", "presence_penalty"] {
            assert!(
                sent.get(refused).is_none(),
                "{group}: {refused} sent: {sent}"
            );
        }
        assert_eq!(
            job["attempt_log"][0]["dropped_params"],
            json!(["temperature", "top_p", "presence_penalty"]),
            "{job}"
        );
    }
    // Without drop_params the call fails as bad_request, naming the parameter, unsent.
    let calls = sim.requests();
    let job = run(&http, &stack.api_url, body("strict")).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "bad_request", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("temperature")),
        "{job}"
    );
    assert_eq!(sim.requests(), calls);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_retry_policy_sets_the_retries_of_its_group_only() -> Result<()> {
    let failing = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: u64::MAX,
            fault: Some(Fault::Server),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("patient", "patient-1", &failing, "", ""),
            deployment("plain", "plain-1", &failing, "", ""),
        ],
        "  num_retries: 0\n  disable_cooldowns: true\n  model_group_retry_policy: {patient: {InternalServerErrorRetries: 3}}",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    let job = run(&http, &stack.api_url, ask("patient", "again")).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 4, "one call and three retries: {job}");
    let job = run(&http, &stack.api_url, ask("plain", "once")).await?;
    assert_eq!(job["attempts"], 1, "num_retries: 0 elsewhere: {job}");
    assert_eq!(failing.requests(), 5);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allowed_fails_policy_tolerates_that_many_429s_before_the_cooldown() -> Result<()> {
    let limited = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: u64::MAX,
            fault: Some(Fault::RateLimit),
            ..Default::default()
        },
    )
    .await?;
    let healthy = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // `order` sends every job to `limited` first while it is not cooling down.
    let yaml = config(
        &[
            deployment("g", "limited", &limited, ", order: 1", ""),
            deployment("g", "healthy", &healthy, ", order: 2", ""),
        ],
        "  cooldown_time: 60\n  allowed_fails_policy: {RateLimitErrorAllowedFails: 2}",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 2).await?;
    let http = reqwest::Client::new();
    for i in 0..6 {
        let job = run(&http, &stack.api_url, ask("g", &format!("job {i}"))).await?;
        assert_eq!(job["status"], "succeeded", "{job}");
        let expected: &[&str] = if i < 3 {
            // Two 429s are tolerated; the third puts `limited` in cooldown.
            &["limited", "healthy"]
        } else {
            &["healthy"]
        };
        assert_eq!(deployments_called(&job), expected, "job {i}: {job}");
    }
    assert_eq!(limited.requests(), 3);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_thinking_signatures_survive_a_tool_turn_and_cache_control_passes_through(
) -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = format!(
        "model_list:
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: '{}', api_key: sk-test-0001}}
general_settings: {{master_key: {KEY}}}
",
        sim.base()
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let thinking = json!({"type": "enabled", "budget_tokens": 1024});
    let user = json!({"role": "user", "content": [
        {"type": "text", "text": "Weather in Paris?", "cache_control": {"type": "ephemeral"}}]});
    let system = json!({"role": "system", "content": [
        {"type": "text", "text": "A long, cacheable manual.", "cache_control": {"type": "ephemeral"}}]});
    for stream in [false, true] {
        // Turn 1: the model thinks and calls a tool.
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "claude", "stream": stream, "max_tokens": 2048, "thinking": thinking,
                   "tools": tools, "messages": [system, user]}),
        )
        .await?;
        assert_eq!(job["status"], "succeeded", "{job}");
        let (_, sent) = sim.last_request().context("no request")?;
        assert_eq!(
            sent["system"][0]["cache_control"],
            json!({"type": "ephemeral"}),
            "{sent}"
        );
        assert_eq!(
            sent["messages"][0]["content"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        let answer = job["result"]["choices"][0]["message"].clone();
        let blocks = answer["thinking_blocks"]
            .as_array()
            .context("no thinking_blocks")?;
        assert_eq!(blocks.len(), 1, "stream {stream}: {answer}");
        assert_eq!(blocks[0]["signature"], "sig_sim");
        assert_eq!(blocks[0]["thinking"], answer["reasoning_content"]);
        let call_id = answer["tool_calls"][0]["id"]
            .as_str()
            .context("no tool call")?;
        let result = json!({"role": "tool", "tool_call_id": call_id, "content": "18°C, clear"});

        // Turn 2: the answer goes back as it came; the signed thinking leads the turn.
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "claude", "max_tokens": 2048, "thinking": thinking, "tools": tools,
                   "messages": [user, answer, result]}),
        )
        .await?;
        assert_eq!(job["status"], "succeeded", "stream {stream}: {job}");
        let (_, sent) = sim.last_request().context("no request")?;
        assert_eq!(
            sent["messages"][1]["content"][0]["type"], "thinking",
            "{sent}"
        );
        assert_eq!(sent["messages"][1]["content"][0]["signature"], "sig_sim");
        assert_eq!(sent["messages"][1]["content"][1]["type"], "tool_use");

        // Without its thinking block the turn is refused, as Anthropic refuses it.
        let mut bare = answer.clone();
        bare.as_object_mut()
            .context("message")?
            .remove("thinking_blocks");
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "claude", "max_tokens": 2048, "thinking": thinking, "tools": tools,
                   "messages": [user, bare, result]}),
        )
        .await?;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["class"], "bad_request", "{job}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_jobs_follow_tags_wildcards_and_pre_call_checks_like_chat_jobs() -> Result<()> {
    let small = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let big = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let mut deployments = vec![
        // Same order and weight: only the pre-call check keeps long inputs off `small`.
        deployment("e", "small", &small, "", ", max_input_tokens: 200"),
        deployment("e", "big", &big, "", ", max_input_tokens: 100000"),
        deployment("tagged", "t-small", &small, ", tags: [cheap]", ""),
        deployment("tagged", "t-big", &big, ", tags: [default]", ""),
    ];
    deployments.push(format!(
        "  - model_name: 'openai/*'
    litellm_params: {{model: 'openai/*', api_base: '{}', api_key: sk-test-0001}}
    model_info: {{id: openai-any}}
",
        small.api_base()
    ));
    let yaml = config(
        &deployments,
        "  enable_pre_call_checks: true\n  enable_tag_filtering: true",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 2).await?;
    let http = reqwest::Client::new();

    // Pre-call checks: a long input never reaches the small deployment.
    for i in 0..4 {
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "e", "input": [format!("{i} {}", long_prompt()), "short"]}),
        )
        .await?;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(deployments_called(&job), ["big"], "{job}");
    }
    assert_eq!(small.requests(), 0, "no long input reached `small`");

    // Tags: request `tags` and `metadata.tags` pick the tagged deployment; untagged jobs
    // go to `default`.
    for _ in 0..3 {
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "tagged", "input": "a", "tags": ["cheap"]}),
        )
        .await?;
        assert_eq!(deployments_called(&job), ["t-small"], "{job}");
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "tagged", "input": "b", "metadata": {"tags": ["cheap"]}}),
        )
        .await?;
        assert_eq!(deployments_called(&job), ["t-small"], "{job}");
        let job = run(
            &http,
            &stack.api_url,
            json!({"model": "tagged", "input": "c"}),
        )
        .await?;
        assert_eq!(deployments_called(&job), ["t-big"], "{job}");
    }
    let (_, sent) = small.last_request().context("small saw no request")?;
    assert!(sent.get("tags").is_none(), "{sent}");
    // Tags that are not a list of strings are refused at the door, naming the field.
    let r = http
        .post(format!("{}/v1/embeddings", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"model": "tagged", "input": "d", "tags": "cheap"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["param"], "tags", "{v}");

    // A wildcard group, through the OpenAI facade: the deployment embeds with the model
    // the caller named.
    let r = http
        .post(format!("{}/v1/embeddings", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"model": "openai/text-embedding-3-small", "input": "hello"}))
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "openai/text-embedding-3-small", "{v}");
    let (path, sent) = small.last_request().context("no request")?;
    assert!(path.ends_with("/embeddings"), "{path}");
    assert_eq!(sent["model"], "text-embedding-3-small", "{sent}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_x_litellm_tags_header_and_a_user_agent_matching_tag_regex_route_jobs() -> Result<()> {
    let paid = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let code = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let fallback = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("g", "paid", &paid, ", tags: [paid]", ""),
            deployment(
                "g",
                "code",
                &code,
                ", tag_regex: ['^User-Agent: claude-code/']",
                "",
            ),
            deployment("g", "dflt", &fallback, ", tags: [default]", ""),
        ],
        "  enable_tag_filtering: true",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 2).await?;
    let http = reqwest::Client::new();
    let post = |path: &str, headers: &[(&str, &str)], body: Value| {
        let mut req = http
            .post(format!("{}{path}", stack.api_url))
            .bearer_auth(KEY)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    for i in 0..3 {
        // Header tags, comma-separated with spaces, on /v1/jobs.
        let r = post(
            "/v1/jobs",
            &[("x-litellm-tags", " gpu , paid")],
            ask("g", &format!("tagged by header {i}")),
        )
        .await?;
        let v: Value = r.json().await?;
        let id = v["id"].as_str().context("no id")?;
        let job = wait_job(&http, &stack.api_url, id, KEY).await?;
        assert_eq!(deployments_called(&job), ["paid"], "{job}");

        // A client whose User-Agent matches the `code` deployment's tag_regex, through
        // the chat facade.
        let r = post(
            "/v1/chat/completions",
            &[("user-agent", "claude-code/1.0.83 (external, cli)")],
            ask("g", &format!("from the cli {i}")),
        )
        .await?;
        assert_eq!(r.status(), 200);
        let job_id = r.headers()["x-sluice-job-id"].to_str()?.to_string();
        let job = wait_job(&http, &stack.api_url, &job_id, KEY).await?;
        assert_eq!(deployments_called(&job), ["code"], "{job}");

        // Any other client goes to `default`.
        let r = post(
            "/v1/jobs",
            &[("user-agent", "curl/8.5.0")],
            ask("g", &format!("plain {i}")),
        )
        .await?;
        let v: Value = r.json().await?;
        let job = wait_job(&http, &stack.api_url, v["id"].as_str().context("id")?, KEY).await?;
        assert_eq!(deployments_called(&job), ["dflt"], "{job}");
    }
    assert_eq!(
        (paid.requests(), code.requests(), fallback.requests()),
        (3, 3, 3)
    );
    // The header's tags add to the body's.
    let mut body = ask("g", "both");
    body["tags"] = json!(["nothing-has-this"]);
    let v: Value = post("/v1/jobs", &[("x-litellm-tags", "paid")], body)
        .await?
        .json()
        .await?;
    let job = wait_job(&http, &stack.api_url, v["id"].as_str().context("id")?, KEY).await?;
    assert_eq!(deployments_called(&job), ["paid"], "{job}");
    // A header that is not text is refused, naming itself.
    let r = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .header(
            "x-litellm-tags",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9")?,
        )
        .json(&ask("g", "bad header"))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["param"], "x-litellm-tags", "{v}");
    stack.stop().await;
    Ok(())
}
