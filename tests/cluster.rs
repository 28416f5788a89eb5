//! A NATS cluster that loses a node: three nats-server processes with routes on
//! loopback, every Sluice stream with three replicas, and the node that leads the jobs
//! stream SIGKILLed mid-run and never restarted. Every job the api accepted succeeds, once,
//! and the attempt rows equal the calls the provider saw.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use common::{job, models, KEY};
use futures::StreamExt;
use sluice_testkit::servers::NatsCluster;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

/// Submits `n` jobs, 8 at a time; returns the ids the api accepted (2xx).
async fn submit(api: &str, n: usize) -> Vec<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    futures::stream::iter(0..n)
        .map(|_| {
            let http = http.clone();
            let url = format!("{api}/v1/jobs");
            async move {
                let r = http
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&job("fast", false))
                    .send()
                    .await
                    .ok()?;
                if !r.status().is_success() {
                    let status = r.status();
                    eprintln!("refused: {status} {}", r.text().await.unwrap_or_default());
                    return None;
                }
                let v: serde_json::Value = r.json().await.ok()?;
                v["id"].as_str().map(str::to_string)
            }
        })
        .buffer_unordered(8)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_loss_of_the_jobs_stream_leader() -> Result<()> {
    let cluster = NatsCluster::start(3)?;
    cluster.wait_ready(Duration::from_secs(20)).await?;
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 300,
            ..Default::default()
        },
    )
    .await?;
    let mut env = TestEnv::new().await?;
    env.nats_url = cluster.urls();
    let extra = "  nats:\n    replicas: 3\n  worker:\n    capacity: 32\n    ack_wait_secs: 5";
    let config = env.config(&models(&sim), extra)?;
    assert_eq!(config.nats_replicas, 3);
    let stack = Stack::start(config, 2).await?;

    // Every stream has three replicas.
    let client = async_nats::connect(cluster.urls().split(',').collect::<Vec<_>>()).await?;
    let js = jetstream::new(client.clone());
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    let mut leader = String::new();
    for name in [
        subjects.jobs_stream(),
        subjects.events_stream(),
        subjects.dlq_stream(),
    ] {
        let info = js.get_stream(&name).await?.info().await?.clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let c = info.cluster.context("stream without cluster info")?;
        assert_eq!(c.replicas.len(), 2, "{name}: {c:?}");
        if name == subjects.jobs_stream() {
            leader = c.leader.context("jobs stream without a leader")?;
        }
    }

    // Jobs in flight, then the jobs stream's leader dies and stays dead.
    let mut accepted = submit(&stack.api_url, 100).await;
    assert_eq!(accepted.len(), 100, "a healthy cluster accepts every job");
    eventually(Duration::from_secs(30), "calls in flight", || async {
        (sim.requests() > 0).then_some(())
    })
    .await?;
    cluster.kill(&leader)?;
    drop(client);

    // More jobs while the cluster elects new leaders; some may be refused (503), none
    // accepted may be lost.
    accepted.extend(submit(&stack.api_url, 200).await);
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len());
    assert!(
        accepted.len() > 100,
        "the api accepted nothing after the node died"
    );

    let store = env.store().await?;
    let pool = store.pool().clone();
    let ids: Vec<uuid::Uuid> = accepted
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let want = ids.len() as i64;
    let p = pool.clone();
    let i = ids.clone();
    eventually(
        Duration::from_secs(180),
        "every accepted job succeeded",
        move || {
            let (p, i) = (p.clone(), i.clone());
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'",
                )
                .bind(&i)
                .fetch_one(&p)
                .await
                .ok()?;
                (n == want).then_some(())
            }
        },
    )
    .await?;
    // Let any redelivery that is still under way finish before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE status = 'succeeded' \
         GROUP BY job_id HAVING count(*) > 1) t",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(twice, 0, "a job succeeded more than once");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts")
        .fetch_one(&pool)
        .await?;
    assert_eq!(
        rows as u64,
        sim.requests(),
        "one attempt row per provider call"
    );
    // A start-up asking for one replica never lowers the streams' three.
    let client = async_nats::connect(env.nats_url.split(',').collect::<Vec<_>>()).await?;
    let js = jetstream::new(client);
    sluice_core::nats::ensure_streams(&js, &subjects, Duration::from_secs(3600), 1).await?;
    let info = js
        .get_stream(subjects.jobs_stream())
        .await?
        .info()
        .await?
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    eprintln!(
        "accepted {} of 300 jobs; {} provider calls; killed {leader}",
        accepted.len(),
        sim.requests()
    );
    stack.stop().await;
    Ok(())
}
