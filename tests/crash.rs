//! At-least-once, recorded once: a worker process SIGKILLed mid-job loses nothing, and
//! the ledger tells the truth about every call that was made.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::consumer;
use common::{job, models, spawn_worker};
use futures::StreamExt;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_mid_job_is_redelivered_and_every_job_is_recorded_once() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            ttft_ms: 2500,
            chunks: 3,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let extra = "  worker:\n    capacity: 200\n    ack_wait_secs: 2\n    drain_secs: 5";
    let path = env.write_config(&models(&sim), extra)?;
    let stack = Stack::start(env.config(&models(&sim), extra)?, 0).await?;
    let store = env.store().await?;
    let pool = store.pool().clone();

    let mut first = spawn_worker(&path)?;
    let http = reqwest::Client::new();
    let submits = (0..100).map(|_| {
        let http = http.clone();
        let url = format!("{}/v1/jobs", stack.api_url);
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

    // Every job is in flight in the first worker (its calls are on record as started).
    let p = pool.clone();
    eventually(Duration::from_secs(30), "100 started attempts", move || {
        let p = p.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE status = 'started'")
                    .fetch_one(&p)
                    .await
                    .ok()?;
            (n == 100).then_some(())
        }
    })
    .await?;
    // ... and the provider has seen all 100 calls: they are truly in flight.
    eventually(Duration::from_secs(30), "100 calls in flight", || async {
        (sim.requests() == 100).then_some(())
    })
    .await?;
    first.kill().await?;

    let _second = spawn_worker(&path)?;
    let p = pool.clone();
    eventually(Duration::from_secs(60), "100 succeeded jobs", move || {
        let p = p.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
                .fetch_one(&p)
                .await
                .ok()?;
            (n == 100).then_some(())
        }
    })
    .await?;

    // One result each; the attempt rows match the calls the provider saw.
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await?;
    assert_eq!(jobs, 100);
    let rows: Vec<(uuid::Uuid, i32, i32, String, String)> =
        sqlx::query_as("SELECT job_id, attempt, delivery, status, worker FROM job_attempts ORDER BY job_id, attempt")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        rows.len() as u64,
        sim.requests(),
        "one attempt row per provider call"
    );
    let mut per_job: HashMap<uuid::Uuid, Vec<(i32, i32, String, String)>> = HashMap::new();
    for (id, attempt, delivery, status, worker) in rows {
        per_job
            .entry(id)
            .or_default()
            .push((attempt, delivery, status, worker));
    }
    assert_eq!(per_job.len(), 100);
    for (id, attempts) in &per_job {
        assert_eq!(attempts.len(), 2, "job {id}: {attempts:?}");
        let (a1, d1, s1, w1) = &attempts[0];
        let (a2, d2, s2, w2) = &attempts[1];
        assert_eq!(
            (*a1, *d1, s1.as_str()),
            (1, 1, "started"),
            "the killed call stays on record"
        );
        assert_eq!((*a2, s2.as_str()), (2, "succeeded"));
        assert!(*d2 >= 2);
        assert_ne!(w1, w2, "the second worker finished it");
    }
    let attempts_col: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM jobs")
        .fetch_all(&pool)
        .await?;
    assert!(attempts_col.iter().all(|a| *a == 2));

    // Exactly one terminal event per job on the events stream.
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    let stream = js.get_stream(subjects.events_stream()).await?;
    let total = stream.get_info().await?.state.messages;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            filter_subject: subjects.events_all(),
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut done: HashMap<String, usize> = HashMap::new();
    for _ in 0..total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await?
            .unwrap()?;
        let kind = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Sluice-Event"))
            .map(|v| v.as_str().to_string());
        if kind.as_deref() == Some("done") {
            *done.entry(msg.subject.to_string()).or_default() += 1;
        }
    }
    assert_eq!(done.len(), 100);
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_concurrency_lease_returns_after_its_ttl() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 3000,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = format!(
        "model_list:
  - model_name: fast
    litellm_params: {{model: openai/sim, api_base: '{}', max_parallel_requests: 1, timeout: 5}}
    model_info: {{id: par-1}}
general_settings: {{master_key: {}}}
",
        sim.api_base(),
        common::KEY
    );
    let extra = "  worker:\n    ack_wait_secs: 2";
    let path = env.write_config(&models, extra)?;
    let stack = Stack::start(env.config(&models, extra)?, 0).await?;
    let store = env.store().await?;
    let pool = store.pool().clone();
    let mut first = spawn_worker(&path)?;
    let http = reqwest::Client::new();
    let accepted: serde_json::Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(common::KEY)
        .json(&job("fast", false))
        .send()
        .await?
        .json()
        .await?;
    let id = accepted["id"].as_str().unwrap().to_string();
    let p = pool.clone();
    eventually(
        Duration::from_secs(20),
        "the first call to start",
        move || {
            let p = p.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts")
                    .fetch_one(&p)
                    .await
                    .ok()?;
                (n == 1).then_some(())
            }
        },
    )
    .await?;
    first.kill().await?;
    let _second = spawn_worker(&path)?;
    let view = common::wait_job(&http, &stack.api_url, &id, common::KEY).await?;
    assert_eq!(view["status"], "succeeded");
    let starts: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at)::float8 FROM job_attempts ORDER BY attempt",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(starts.len(), 2);
    // The dead worker's lease (timeout 5 s + 10 s margin) held the only slot until it expired.
    let gap = starts[1] - starts[0];
    assert!(
        gap >= 14.9,
        "second call started {gap:.1} s after the first"
    );
    stack.stop().await;
    Ok(())
}
