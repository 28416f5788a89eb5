//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_testkit::sim::SimHandle;
use sluice_testkit::TestEnv;

/// A one-deployment model group `fast` on the simulator, priced.
pub fn models(sim: &SimHandle) -> String {
    format!(
        "model_list:
  - model_name: fast
    litellm_params:
      model: openai/sim-model
      api_base: {}
      api_key: sk-test-secret-key-123456
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      id: sim-1
general_settings:
  master_key: {KEY}
",
        sim.api_base(),
    )
}

pub fn job(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say something about rivers."}], "stream": stream})
}

/// One event as seen on NATS.
#[derive(Debug, Clone)]
pub struct Ev {
    pub kind: String,
    pub attempt: u32,
    pub seq: u64,
    pub body: Value,
}

/// Reads a job's events from the start until its terminal event.
pub async fn read_events(env: &TestEnv, job_id: &str) -> Result<Vec<Ev>> {
    let client = async_nats::connect(&env.nats_url).await?;
    let js = jetstream::new(client.clone());
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    let stream = js.get_stream(subjects.events_stream()).await?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            filter_subject: format!("{}.events.{job_id}", env.prefix),
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .context("timed out waiting for events")?
            .context("event subscription ended")??;
        let h = msg.headers.clone().context("event without headers")?;
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
        let ev = Ev {
            kind: get("Sluice-Event"),
            attempt: get("Sluice-Attempt").parse().unwrap_or(0),
            seq: get("Sluice-Seq").parse().unwrap_or(0),
            body: serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
        };
        let end = ev.kind == "done" || ev.kind == "error";
        out.push(ev);
        if end {
            return Ok(out);
        }
    }
}

/// Polls `GET /v1/jobs/{id}` until the job is terminal.
pub async fn wait_job(http: &reqwest::Client, api: &str, id: &str, key: &str) -> Result<Value> {
    sluice_testkit::eventually(Duration::from_secs(60), "job to finish", || async {
        let v: Value = http
            .get(format!("{api}/v1/jobs/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(v["status"].as_str(), Some("succeeded" | "failed")).then_some(v)
    })
    .await
}

pub const KEY: &str = "sk-master-test-key-0001";

/// Submits `n` jobs of `model` at `priority` concurrently; returns their ids.
pub async fn submit_many(
    http: &reqwest::Client,
    api: &str,
    model: &str,
    priority: &str,
    n: usize,
) -> Result<Vec<String>> {
    let futs = (0..n).map(|i| {
        let http = http.clone();
        let body = json!({"model": model, "priority": priority, "max_tokens": 20,
            "messages": [{"role": "user", "content": format!("job {i} for {priority}")}]});
        let url = format!("{api}/v1/jobs");
        async move {
            let v: Value = http
                .post(url)
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            v["id"].as_str().map(str::to_string).context("no id")
        }
    });
    futures::future::join_all(futs).await.into_iter().collect()
}

/// Waits until `n` jobs in the database are terminal.
pub async fn wait_terminal(pool: &sqlx::PgPool, n: i64, limit: Duration) -> Result<()> {
    sluice_testkit::eventually(limit, &format!("{n} finished jobs"), || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('succeeded','failed')")
                .fetch_one(pool)
                .await
                .ok()?;
        (done >= n).then_some(())
    })
    .await
}

/// A `sluice worker` process on `config`, isolated from the caller's environment, killed
/// when dropped.
pub fn spawn_worker(config: &std::path::Path) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("worker")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("SLUICE_METRICS_ADDR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}
