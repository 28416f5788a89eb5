//! Every job ends: calls across deliveries and deferrals are bounded, waiting for limits
//! is bounded, and a message delivered too often ends its job `failed` in the DLQ.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{wait_job, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, Fault, SimConfig, SimHandle};
use sluice_testkit::{eventually, Stack, TestEnv};

fn one_deployment(sim: &SimHandle, params: &str, router: &str) -> String {
    format!(
        "model_list:
  - model_name: fast
    litellm_params: {{model: openai/sim, api_base: '{}'{params}}}
    model_info: {{id: only}}
router_settings:
{router}
general_settings: {{master_key: {KEY}}}
",
        sim.api_base()
    )
}

async fn submit(http: &reqwest::Client, api: &str) -> Result<String> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "end me"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["id"].as_str().map(str::to_string).context("no id")
}

async fn attempt_rows(pool: &sqlx::PgPool, id: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1::uuid")
            .bind(id)
            .fetch_one(pool)
            .await?,
    )
}

/// The case: the group's only deployment answers 500 to every call, with
/// `allowed_fails` and `cooldown_time` set, so the job cycles cooldown → deferral →
/// more calls. The calls of all its deliveries count: it ends `failed` with class
/// `server` after exactly its budget of calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_only_deployment_always_fails_ends_after_its_call_budget() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: u64::MAX,
            fault: Some(Fault::Server),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = one_deployment(
        &sim,
        "",
        "  num_retries: 3\n  allowed_fails: 1\n  cooldown_time: 1",
    );
    let extra = "  worker:\n    max_calls_per_job: 6\n  limits:\n    max_defer_secs: 1";
    let stack = Stack::start(env.config(&models, extra)?, 1).await?;
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let id = submit(&http, &stack.api_url).await?;

    let job = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["error"]["class"], "server",
        "the last error's class: {job}"
    );
    let deferrals: i32 = sqlx::query_scalar("SELECT deferrals FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(store.pool())
        .await?;
    assert!(deferrals >= 1, "the job went through cooldown deferrals");
    // Calls stop at the budget, and each has its row.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.requests(), 6, "calls across all deliveries");
    assert_eq!(attempt_rows(store.pool(), &id).await?, 6);
    assert_eq!(job["attempts"], 6, "{job}");
    assert_eq!(
        job["attempt_log"].as_array().map(Vec::len),
        Some(6),
        "{job}"
    );
    stack.stop().await;
    Ok(())
}

/// A job waiting for a limit that will not free up soon ends when its wait passes
/// `sluice.limits.max_wait_secs`, with class `wait_exceeded`, and is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_longer_than_max_wait_fails_with_wait_exceeded() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // One request a minute: the second job waits about a minute for it.
    let models = one_deployment(&sim, ", rpm: 1", "  num_retries: 0");
    let extra = "  limits:\n    max_defer_secs: 1\n    max_wait_secs: 3";
    let stack = Stack::start(env.config(&models, extra)?, 1).await?;
    let http = reqwest::Client::new();
    let first = submit(&http, &stack.api_url).await?;
    let job = wait_job(&http, &stack.api_url, &first, KEY).await?;
    assert_eq!(job["status"], "succeeded");
    let second = submit(&http, &stack.api_url).await?;
    let job = wait_job(&http, &stack.api_url, &second, KEY).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "wait_exceeded", "{job}");
    assert_eq!(sim.requests(), 1, "the waiting job was never called");
    let events = common::read_events(&env, &second).await?;
    let last = events.last().context("no events")?;
    assert_eq!(last.body["status"], "failed", "subscribers see the end");
    stack.stop().await;
    Ok(())
}

/// Workers die on a job again and again (here: its call hangs and the worker is
/// SIGKILLed each time). Once `max_deliver` deliveries died mid-call, the next one ends
/// the job `failed` (row and terminal event) and puts its message in the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_exhausts_max_deliver_ends_its_job_and_goes_to_the_dlq() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: u64::MAX,
            fault: Some(Fault::Hang),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = one_deployment(&sim, ", timeout: 600", "  num_retries: 0");
    let extra = "  worker:\n    ack_wait_secs: 1\n    max_deliver: 2";
    let path = env.write_config(&models, extra)?;
    let stack = Stack::start(env.config(&models, extra)?, 0).await?;
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let id = submit(&http, &stack.api_url).await?;

    // Two deliveries, each killed mid-call.
    for n in 1..=2u64 {
        let mut worker = common::spawn_worker(&path)?;
        eventually(Duration::from_secs(60), "the call to hang", || async {
            (sim.requests() == n).then_some(())
        })
        .await?;
        worker.kill().await?;
    }
    // The third delivery ends it.
    let _worker = common::spawn_worker(&path)?;
    let job = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "deliveries_exhausted", "{job}");
    assert_eq!(sim.requests(), 2, "no third call");
    assert_eq!(attempt_rows(store.pool(), &id).await?, 2);
    let events = common::read_events(&env, &id).await?;
    assert_eq!(
        events.last().map(|e| e.body["status"].clone()),
        Some(json!("failed"))
    );

    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    let mut dlq = js.get_stream(subjects.dlq_stream()).await?;
    let info = dlq.info().await?;
    assert_eq!(info.state.messages, 1, "the message is in the DLQ");
    stack.stop().await;
    Ok(())
}
