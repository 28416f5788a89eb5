//! Submit is atomic in effect: an api that dies between recording a job and publishing it
//! leaves the job in the outbox, a worker's reconciler publishes it, and the job runs. An
//! idempotent retry meanwhile finds that job, which then runs.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{models, wait_job, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_between_record_and_publish_still_runs_the_job() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let path = env.write_config(&models(&sim), "")?;
    // An api process that dies right after the job row is recorded.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .arg("api")
        .env("SLUICE_API_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE_FAULT_EXIT_AT", "after_record")
        .env("RUST_LOG", "error")
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let doomed_url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "api ready", || async {
        let r = http.get(format!("{doomed_url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    let body =
        json!({"model": "fast", "messages": [{"role": "user", "content": "outlive the api"}]});
    let answer = http
        .post(format!("{doomed_url}/v1/jobs"))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "order-42")
        .json(&body)
        .send()
        .await;
    assert!(answer.is_err(), "the api died before answering: {answer:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), doomed.wait()).await??;
    assert_eq!(
        status.code(),
        Some(137),
        "the api exited at the fault point"
    );

    // The row is recorded and queued, and nothing was published.
    let store = env.store().await?;
    let (id, row_status): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, status FROM jobs WHERE idempotency_key = 'order-42'")
            .fetch_one(store.pool())
            .await?;
    assert_eq!(row_status, "queued");

    // A healthy api and a worker. The client retries with its idempotency key: the same
    // job, which runs.
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let again: Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "order-42")
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(again["id"].as_str().context("no id")?, id.to_string());
    let job = wait_job(&http, &stack.api_url, &id.to_string(), KEY).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(sim.requests(), 1, "run once");
    // The reconciler's publish recorded where the message sat in the jobs stream (after
    // its publish: the job may finish first).
    eventually(
        Duration::from_secs(30),
        "stream sequence recorded",
        || async {
            let seq: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM job_stream_seqs WHERE job_id = $1")
                    .bind(id)
                    .fetch_optional(store.pool())
                    .await
                    .ok()?;
            seq.is_some_and(|s| s > 0).then_some(())
        },
    )
    .await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(store.pool())
        .await?;
    eventually(Duration::from_secs(30), "outbox drained", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
            .fetch_one(store.pool())
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await
    .with_context(|| format!("{left} outbox rows left"))?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_job_leaves_nothing_in_the_outbox() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let ids = common::submit_many(&http, &stack.api_url, "fast", "normal", 20).await?;
    let store = env.store().await?;
    common::wait_terminal(store.pool(), 20, Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(10), "outbox empty", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
            .fetch_one(store.pool())
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await?;
    assert_eq!(sim.requests(), ids.len() as u64, "each job called once");
    // Each acknowledged publish recorded its own stream sequence.
    let seqs: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT s.seq FROM jobs j LEFT JOIN job_stream_seqs s ON s.job_id = j.id",
    )
    .fetch_all(store.pool())
    .await?;
    let distinct: std::collections::HashSet<i64> = seqs.iter().flatten().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "one sequence per job: {seqs:?}");
    stack.stop().await;
    Ok(())
}
