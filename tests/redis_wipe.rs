//! Money state survives Redis: a key's budget is spent and its jobs wait; Redis loses
//! every counter; the budget is rebuilt from the Postgres ledger, so the waiting jobs
//! still make no call.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::KEY;
use deadpool_redis::redis;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

/// Deletes every Redis key of this test's prefix: what Redis restarted empty looks like
/// to it, without touching other tests' keys.
async fn wipe(env: &TestEnv) -> Result<usize> {
    let client = redis::Client::open(env.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}}}*", env.prefix))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(keys.len())
}

async fn spent(pool: &sqlx::PgPool) -> Result<f64> {
    Ok(
        sqlx::query_scalar::<_, Option<f64>>("SELECT sum(cost)::float8 FROM job_attempts")
            .fetch_one(pool)
            .await?
            .unwrap_or(0.0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_stays_spent_when_redis_loses_its_counters() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&common::models(&sim), "  limits:\n    max_defer_secs: 1")?,
        1,
    )
    .await?;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/keys", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"name": "thrifty", "max_budget": 0.0001, "budget_duration": "1d"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = created["key"].as_str().context("key")?.to_string();
    for i in 0..10 {
        http.post(format!("{}/v1/jobs", stack.api_url))
            .bearer_auth(&key)
            .json(&json!({"model": "fast", "max_tokens": 10,
                "messages": [{"role": "user", "content": format!("spend {i}")}]}))
            .send()
            .await?
            .error_for_status()?;
    }
    let store = env.store().await?;
    // The budget runs out: some jobs ran, the rest wait.
    eventually(
        Duration::from_secs(60),
        "jobs waiting for the budget",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND not_before IS NOT NULL",
            )
            .fetch_one(store.pool())
            .await
            .ok()?;
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
                    .fetch_one(store.pool())
                    .await
                    .ok()?;
            (done >= 1 && waiting + done == 10).then_some(done)
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = sim.requests();
    let before = spent(store.pool()).await?;
    assert!(calls < 10, "the budget stopped some jobs ({calls} calls)");

    let wiped = wipe(&env).await?;
    assert!(wiped > 0, "there were counters to lose");
    // Several deferral rounds: the waiting jobs are asked again and again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.requests(),
        calls,
        "no call after Redis lost the spend: it was rebuilt from the ledger"
    );
    assert_eq!(spent(store.pool()).await?, before);
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(waiting as u64, 10 - calls, "the rest still wait");
    stack.stop().await;
    Ok(())
}
