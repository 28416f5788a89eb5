//! Router and reliability end to end: shared cooldowns, fallbacks, stream failures,
//! strategies, and waiting when every deployment cools down.

mod common;

use anyhow::Result;
use common::{read_events, wait_job, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, Fault, SimConfig, SimHandle};
use sluice_testkit::{Stack, TestEnv};

fn deployment(group: &str, id: &str, sim: &SimHandle, extra: &str) -> String {
    format!(
        "  - model_name: {group}
    litellm_params: {{model: openai/sim, api_base: '{}'{extra}}}
    model_info: {{id: {id}}}
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
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["id"].as_str().unwrap().to_string())
}

fn body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "route me"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_with_retry_after_cools_the_deployment_for_every_worker() -> Result<()> {
    let limited = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1000,
            fault: Some(Fault::RateLimit),
            ..Default::default()
        },
    )
    .await?;
    let healthy = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // order puts the limited one first, so only a cooldown keeps jobs away from it.
    let yaml = config(
        &[
            deployment("g", "limited", &limited, ", order: 1"),
            deployment("g", "healthy", &healthy, ", order: 2"),
        ],
        "  cooldown_time: 30",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 2).await?;
    let http = reqwest::Client::new();
    let first = submit(&http, &stack.api_url, body("g", false)).await?;
    let view = wait_job(&http, &stack.api_url, &first, KEY).await?;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["attempt_log"][0]["error"]["class"], "rate_limit");
    assert_eq!(view["attempt_log"][1]["deployment"], "healthy");
    // More jobs over two workers: none goes to the cooling deployment while its
    // cooldown lasts (the provider's Retry-After, 1 s, wins over the router's 30 s).
    for _ in 0..10 {
        let id = submit(&http, &stack.api_url, body("g", false)).await?;
        let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
        assert_eq!(v["attempt_log"].as_array().unwrap().len(), 1);
        assert_eq!(v["attempt_log"][0]["deployment"], "healthy");
        if limited.requests() > 1 {
            break; // the 1 s cooldown ran out; that is the provider's own word
        }
    }
    assert!(limited.requests() <= 2);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overload_storm_moves_jobs_to_the_other_deployment() -> Result<()> {
    let storm = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1000,
            fault: Some(Fault::Overloaded529),
            ..Default::default()
        },
    )
    .await?;
    let calm = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("g", "storm", &storm, ", cooldown_time: 60"),
            deployment("g", "calm", &calm, ""),
        ],
        "  num_retries: 2",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    // The first job meets the storm (or not, by the shuffle) ...
    let first = submit(&http, &stack.api_url, body("g", false)).await?;
    assert_eq!(
        wait_job(&http, &stack.api_url, &first, KEY).await?["status"],
        "succeeded"
    );
    let after_first = storm.requests();
    assert!(after_first <= 1);
    if after_first == 0 {
        // The shuffle chose the calm one; send jobs until one meets the storm.
        for _ in 0..20 {
            let id = submit(&http, &stack.api_url, body("g", false)).await?;
            wait_job(&http, &stack.api_url, &id, KEY).await?;
            if storm.requests() == 1 {
                break;
            }
        }
    }
    assert_eq!(storm.requests(), 1);
    // ... and from then on every job, however many at once, goes to the calm one.
    let calm_before = calm.requests();
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(submit(&http, &stack.api_url, body("g", false)).await?);
    }
    for id in &ids {
        assert_eq!(
            wait_job(&http, &stack.api_url, id, KEY).await?["status"],
            "succeeded"
        );
    }
    assert_eq!(calm.requests() - calm_before, 12);
    assert_eq!(
        storm.requests(),
        1,
        "the storming deployment cooled down after its first 529"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn context_window_and_content_policy_errors_go_to_their_fallback_groups() -> Result<()> {
    let small = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1000,
            fault: Some(Fault::ContextWindow),
            ..Default::default()
        },
    )
    .await?;
    let strict = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1000,
            fault: Some(Fault::ContentPolicy),
            ..Default::default()
        },
    )
    .await?;
    let big = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let lenient = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("small", "small-1", &small, ""),
            deployment("strict", "strict-1", &strict, ""),
            deployment("big", "big-1", &big, ""),
            deployment("lenient", "lenient-1", &lenient, ""),
        ],
        "  context_window_fallbacks: [{small: [big]}]\n  content_policy_fallbacks: [{strict: [lenient]}]\n  fallbacks: [{small: [lenient]}, {strict: [big]}]",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();

    let id = submit(&http, &stack.api_url, body("small", true)).await?;
    let events = read_events(&env, &id).await?;
    assert_eq!(events[0].kind, "retry");
    assert_eq!(events[0].body["error"]["class"], "context_window");
    assert_eq!(events.last().unwrap().kind, "done");
    let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
    let log = v["attempt_log"].as_array().unwrap();
    assert_eq!(
        log.len(),
        2,
        "no retry of a context-window error in its own group: {log:?}"
    );
    assert_eq!(log[1]["deployment"], "big-1");
    assert_eq!(v["model"], "small", "the job keeps the group it asked for");

    let id = submit(&http, &stack.api_url, body("strict", false)).await?;
    let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
    let log = v["attempt_log"].as_array().unwrap();
    assert_eq!(log[0]["error"]["class"], "content_policy");
    assert_eq!(log[1]["deployment"], "lenient-1");
    assert_eq!(v["status"], "succeeded");

    // Per-job fallbacks come first; disable_fallbacks turns them all off.
    let mut b = body("strict", false);
    b["disable_fallbacks"] = json!(true);
    let id = submit(&http, &stack.api_url, b).await?;
    let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["class"], "content_policy");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_first_token_and_a_cut_stream_are_retried_on_another_deployment() -> Result<()> {
    let stalled = sim::start(
        "127.0.0.1:0",
        SimConfig {
            ttft_ms: 10_000,
            ..Default::default()
        },
    )
    .await?;
    let cut = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1000,
            fault: Some(Fault::Truncate),
            chunks: 8,
            ..Default::default()
        },
    )
    .await?;
    let good = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("g", "stalled", &stalled, ", order: 1, stream_timeout: 0.5"),
            deployment("g", "cut", &cut, ", order: 2"),
            deployment("g", "good", &good, ", order: 3"),
        ],
        "  num_retries: 3",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    let id = submit(&http, &stack.api_url, body("g", true)).await?;
    let events = read_events(&env, &id).await?;
    let retries: Vec<&common::Ev> = events.iter().filter(|e| e.kind == "retry").collect();
    assert_eq!(retries.len(), 2, "{events:?}");
    assert_eq!(retries[0].body["error"]["class"], "timeout");
    assert_eq!(retries[1].body["error"]["class"], "truncated_stream");
    // The cut stream's partial chunks came before its retry event, on attempt 2.
    assert!(events.iter().any(|e| e.kind == "chunk" && e.attempt == 2));
    let done = events.last().unwrap();
    assert_eq!((done.kind.as_str(), done.attempt), ("done", 3));
    let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(v["attempt_log"][2]["deployment"], "good");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_based_routing_prefers_the_faster_deployment() -> Result<()> {
    let fast = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 5,
            ..Default::default()
        },
    )
    .await?;
    let slow = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 150,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("g", "slow", &slow, ""),
            deployment("g", "fast", &fast, ""),
        ],
        "  routing_strategy: latency-based-routing",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let id = submit(&http, &stack.api_url, body("g", false)).await?;
        wait_job(&http, &stack.api_url, &id, KEY).await?;
    }
    assert!(
        fast.requests() >= 17,
        "fast {} slow {}",
        fast.requests(),
        slow.requests()
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_every_deployment_cools_down_the_job_waits_and_then_completes() -> Result<()> {
    let only = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1,
            fault: Some(Fault::RateLimit),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[deployment("g", "only", &only, ", cooldown_time: 2")],
        "  num_retries: 2",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    let id = submit(&http, &stack.api_url, body("g", false)).await?;
    let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(v["status"], "succeeded");
    let log = v["attempt_log"].as_array().unwrap();
    assert_eq!(
        log.len(),
        2,
        "waiting for the cooldown is not an attempt: {log:?}"
    );
    let store = env.store().await?;
    let starts: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at)::float8 FROM job_attempts ORDER BY attempt",
    )
    .fetch_all(store.pool())
    .await?;
    assert!(
        starts[1] - starts[0] >= 1.9,
        "the second call waited out the 2 s cooldown: {starts:?}"
    );
    assert_eq!(only.requests(), 2);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_group_alias_routes_to_its_group() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[deployment("real", "real-1", &s, "")],
        "  model_group_alias: {nickname: real}",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = reqwest::Client::new();
    let id = submit(&http, &stack.api_url, body("nickname", false)).await?;
    let v = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["attempt_log"][0]["deployment"], "real-1");
    stack.stop().await;
    Ok(())
}
