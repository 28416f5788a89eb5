//! Redis down mid-run: jobs wait (fail-closed), none is lost, none is called without an
//! admission check, and everything completes once Redis is back. This file is its own
//! test binary, so stopping its Redis touches no other test.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{submit_many, wait_terminal};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{services, Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_run_defers_jobs_and_they_complete_after_restart() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 100,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let models = format!(
        "model_list:
  - model_name: limited
    litellm_params: {{model: openai/sim, api_base: '{}', rpm: 100000}}
general_settings: {{master_key: {}}}
",
        sim.api_base(),
        common::KEY
    );
    let stack = Stack::start(env.config(&models, "  worker:\n    capacity: 4")?, 1).await?;
    let http = reqwest::Client::new();
    submit_many(&http, &stack.api_url, "limited", "normal", 40).await?;
    let store = env.store().await?;
    wait_terminal(store.pool(), 4, Duration::from_secs(30)).await?;

    services().stop_redis()?;
    // Calls admitted before the outage finish; after that no call starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = sim.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.requests(),
        during,
        "no provider call without an admission check"
    );
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(failed, 0);

    services().start_redis()?;
    wait_terminal(store.pool(), 40, Duration::from_secs(60)).await?;
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(succeeded, 40, "no job lost");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(
        attempts as u64,
        sim.requests(),
        "every call is on record, once"
    );
    assert_eq!(attempts, 40);
    stack.stop().await;
    Ok(())
}
