//! Graceful drain: SIGTERM to a `sluice worker` process with 100 jobs in flight stops
//! pulling, finishes what it can before the drain deadline, hands the rest back, flushes
//! its writes and exits 0. Nothing is lost: every job completes, once.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{job, models, spawn_worker};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};
use tokio::process::Child;

fn sigterm(child: &Child) -> Result<()> {
    let pid = child.id().context("worker already exited")?;
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -TERM {pid} failed");
    Ok(())
}

async fn submit_100(api: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let submits = (0..100).map(|_| {
        let http = http.clone();
        let url = format!("{api}/v1/jobs");
        async move {
            http.post(url)
                .bearer_auth(common::KEY)
                .json(&job("fast", true))
                .send()
                .await?
                .error_for_status()?;
            Ok::<_, anyhow::Error>(())
        }
    });
    for r in futures::future::join_all(submits).await {
        r?;
    }
    Ok(())
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}

/// Waits until all 100 jobs have a call in progress.
async fn all_in_flight(pool: &sqlx::PgPool) -> Result<()> {
    let p = pool.clone();
    eventually(Duration::from_secs(60), "100 calls in flight", move || {
        let p = p.clone();
        async move {
            let n = count(
                &p,
                "SELECT count(*) FROM job_attempts WHERE status = 'started'",
            )
            .await;
            (n == 100).then_some(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_in_flight_finishes_them_all_then_exits_0() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            ttft_ms: 2000,
            chunks: 3,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    // A drain deadline far beyond any call: the worker finishes everything itself.
    let extra = "  worker:\n    capacity: 200\n    drain_secs: 120";
    let path = env.write_config(&models(&sim), extra)?;
    let stack = Stack::start(env.config(&models(&sim), extra)?, 0).await?;
    let pool = env.store().await?.pool().clone();

    let mut worker = spawn_worker(&path)?;
    submit_100(&stack.api_url).await?;
    all_in_flight(&pool).await?;
    sigterm(&worker)?;
    let status = tokio::time::timeout(Duration::from_secs(180), worker.wait())
        .await
        .context("worker did not exit")??;
    assert!(status.success(), "worker exited with {status}");

    // Everything it had was finished and recorded before it exited.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
        )
        .await,
        100
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM job_attempts").await, 100);
    assert_eq!(sim.requests(), 100, "no job was called twice");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_deadline_hands_jobs_back_and_the_next_worker_finishes_them(
) -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            ttft_ms: 4000,
            chunks: 3,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    // A drain deadline shorter than one call: the jobs go back to the queue.
    let extra = "  worker:\n    capacity: 200\n    drain_secs: 1";
    let path = env.write_config(&models(&sim), extra)?;
    let stack = Stack::start(env.config(&models(&sim), extra)?, 0).await?;
    let pool = env.store().await?.pool().clone();

    let mut first = spawn_worker(&path)?;
    submit_100(&stack.api_url).await?;
    all_in_flight(&pool).await?;
    sigterm(&first)?;
    let status = tokio::time::timeout(Duration::from_secs(60), first.wait())
        .await
        .context("worker did not exit")??;
    assert!(status.success(), "worker exited with {status}");
    // Its calls are on record (flushed before exit) and none finished.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM job_attempts WHERE status = 'started'"
        )
        .await,
        100
    );

    let _second = spawn_worker(&path)?;
    let p = pool.clone();
    eventually(Duration::from_secs(90), "100 succeeded jobs", move || {
        let p = p.clone();
        async move {
            let n = count(&p, "SELECT count(*) FROM jobs WHERE status = 'succeeded'").await;
            (n == 100).then_some(())
        }
    })
    .await?;
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 100);
    // Each job: the abandoned call, then the one that succeeded.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM (SELECT job_id FROM job_attempts GROUP BY job_id
             HAVING count(*) = 2 AND bool_or(status = 'succeeded')) t"
        )
        .await,
        100
    );
    stack.stop().await;
    Ok(())
}

/// Shutting the api down ends the long-lived streams it serves (a job's SSE events, a
/// streamed chat completion) and answers a waiting synchronous chat call, so the api
/// stops well within its grace period even though no job has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_shutdown_ends_open_streams_and_stops_within_its_grace() -> Result<()> {
    use futures::StreamExt;
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // The grace is 60 s; the api must stop long before that on its own.
    let extra = "  worker:\n    drain_secs: 60";
    let stack = Stack::start(env.config(&models(&sim), extra)?, 0).await?;
    let pool = env.store().await?.pool().clone();
    let http = reqwest::Client::new();
    let api = stack.api_url.clone();

    // No worker runs: every job stays queued and every stream stays open.
    let submitted: serde_json::Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(common::KEY)
        .json(&job("fast", true))
        .send()
        .await?
        .json()
        .await?;
    let id = submitted["id"].as_str().context("job id")?.to_string();
    let events = http
        .get(format!("{api}/v1/jobs/{id}/events"))
        .bearer_auth(common::KEY)
        .send()
        .await?;
    assert_eq!(events.status(), 200);
    let chat_stream = http
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(common::KEY)
        .json(&job("fast", true))
        .send()
        .await?;
    assert_eq!(chat_stream.status(), 200);
    let waiting = tokio::spawn({
        let (http, api) = (http.clone(), api.clone());
        async move {
            http.post(format!("{api}/v1/chat/completions"))
                .bearer_auth(common::KEY)
                .json(&job("fast", false))
                .send()
                .await
        }
    });
    // The synchronous call has submitted its job and is waiting for it.
    let p = pool.clone();
    eventually(Duration::from_secs(30), "three queued jobs", move || {
        let p = p.clone();
        async move { (count(&p, "SELECT count(*) FROM jobs").await == 3).then_some(()) }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    tokio::time::timeout(Duration::from_secs(30), stack.stop())
        .await
        .context("the api did not stop within 30 s of its 60 s grace")?;

    // Each stream ended with the shutdown notice and without [DONE].
    for (what, resp) in [("events", events), ("chat stream", chat_stream)] {
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next()).await? {
            match chunk {
                Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => break,
            }
        }
        assert!(
            text.contains("the api is shutting down"),
            "{what} ended without the notice: {text:?}"
        );
        assert!(!text.contains("[DONE]"), "{what}: {text:?}");
    }
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert_eq!(waited.status(), 503);
    let err: serde_json::Value = waited.json().await?;
    assert_eq!(err["error"]["code"], "shutting_down", "{err}");
    // The jobs themselves go on: nothing was cancelled.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs WHERE status = 'queued'").await,
        3
    );
    Ok(())
}
