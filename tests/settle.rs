//! Every exit path settles: a cancelled call gives its concurrency lease back at once,
//! and a revoked key's queued jobs end `failed` with class `auth`, never called.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{wait_job, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, Fault, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

async fn submit(http: &reqwest::Client, api: &str, key: &str) -> Result<String> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(key)
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "settle me"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["id"].as_str().map(str::to_string).context("no id")
}

/// One call at a time on the deployment, and a lease that would outlive the test (the
/// call's timeout is ten minutes): only a settlement on cancel lets the next job run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_releases_its_concurrency_lease_at_once() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1,
            fault: Some(Fault::Hang),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = format!(
        "model_list:
  - model_name: fast
    litellm_params: {{model: openai/sim, api_base: '{}', max_parallel_requests: 1, timeout: 600}}
general_settings: {{master_key: {KEY}}}
",
        sim.api_base()
    );
    let stack = Stack::start(env.config(&models, "  limits:\n    max_defer_secs: 1")?, 1).await?;
    let http = reqwest::Client::new();
    let hung = submit(&http, &stack.api_url, KEY).await?;
    eventually(
        Duration::from_secs(30),
        "the first call in flight",
        || async { (sim.requests() == 1).then_some(()) },
    )
    .await?;
    let next = submit(&http, &stack.api_url, KEY).await?;
    let cancel = http
        .post(format!("{}/v1/jobs/{hung}/cancel", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(cancel.status(), 200);
    // The second job gets the deployment's only slot long before the lease would expire.
    let job = wait_job(&http, &stack.api_url, &next, KEY).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_queued_jobs_end_failed_with_class_auth() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // No worker yet: the key's jobs wait in the queue.
    let mut stack = Stack::start(env.config(&common::models(&sim), "")?, 0).await?;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/keys", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"name": "doomed", "max_budget": 10}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (key_id, key) = (
        created["id"].as_str().context("id")?.to_string(),
        created["key"].as_str().context("key")?.to_string(),
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&http, &stack.api_url, &key).await?);
    }
    let revoked = http
        .delete(format!("{}/v1/keys/{key_id}", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(revoked.status(), 200);
    stack.add_worker();
    for id in &ids {
        let job = wait_job(&http, &stack.api_url, id, KEY).await?;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["class"], "auth", "{job}");
        let events = common::read_events(&env, id).await?;
        let last = events.last().context("no events")?;
        assert_eq!(
            last.body["status"], "failed",
            "subscribers see the end: {last:?}"
        );
    }
    // The worker took every message (the stream is empty) and called none.
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    let name = subjects.jobs_stream();
    eventually(Duration::from_secs(30), "the queue to empty", || async {
        let mut jobs = js.get_stream(&name).await.ok()?;
        let n = jobs.info().await.ok()?.state.messages;
        (n == 0).then_some(())
    })
    .await?;
    assert_eq!(sim.requests(), 0, "a revoked key's job is never called");
    stack.stop().await;
    Ok(())
}

/// The drain's hard stop hands a job back while its call hangs: the call's concurrency
/// lease (ten minutes here) is released then, so the job's next delivery runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hard_stop_releases_the_lease_of_the_call_it_abandons() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1,
            fault: Some(Fault::Hang),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = format!(
        "model_list:
  - model_name: fast
    litellm_params: {{model: openai/sim, api_base: '{}', max_parallel_requests: 1, timeout: 600}}
general_settings: {{master_key: {KEY}}}
",
        sim.api_base()
    );
    let extra =
        "  worker:\n    drain_secs: 1\n    ack_wait_secs: 2\n  limits:\n    max_defer_secs: 1";
    let path = env.write_config(&models, extra)?;
    let stack = Stack::start(env.config(&models, extra)?, 0).await?;
    let mut first = common::spawn_worker(&path)?;
    let http = reqwest::Client::new();
    let id = submit(&http, &stack.api_url, KEY).await?;
    eventually(Duration::from_secs(30), "the call in flight", || async {
        (sim.requests() == 1).then_some(())
    })
    .await?;
    // SIGTERM: drain for a second, then the hard stop hands the job back.
    let pid = first.id().context("worker pid")?;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(30), first.wait()).await??;
    assert!(
        status.success(),
        "the worker drained and exited: {status:?}"
    );
    let _second = common::spawn_worker(&path)?;
    let job = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    stack.stop().await;
    Ok(())
}
