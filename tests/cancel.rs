//! Cancelling a job: a queued one is never called, a running one stops.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{read_events, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

async fn submit(http: &reqwest::Client, api: &str) -> Result<String> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "cancel me"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["id"].as_str().unwrap().to_string())
}

async fn cancel(http: &reqwest::Client, api: &str, id: &str) -> Result<Value> {
    Ok(http
        .post(format!("{api}/v1/jobs/{id}/cancel"))
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_job_is_never_called_and_a_running_one_stops() -> Result<()> {
    let s = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 20_000,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let mut stack = Stack::start(env.config(&common::models(&s), "")?, 0).await?;
    let http = reqwest::Client::new();

    // Queued: no worker yet.
    let queued = submit(&http, &stack.api_url).await?;
    assert_eq!(
        cancel(&http, &stack.api_url, &queued).await?["status"],
        "cancelled"
    );
    stack.add_worker();
    let events = read_events(&env, &queued).await?;
    assert_eq!(events.last().unwrap().body["status"], "cancelled");
    assert_eq!(s.requests(), 0, "a cancelled job is never called");

    // Running: the 20 s call is in flight when the cancel comes.
    let running = submit(&http, &stack.api_url).await?;
    eventually(Duration::from_secs(20), "the call to start", || async {
        (s.requests() == 1).then_some(())
    })
    .await?;
    cancel(&http, &stack.api_url, &running).await?;
    let events =
        tokio::time::timeout(Duration::from_secs(10), read_events(&env, &running)).await??;
    assert_eq!(
        events.last().unwrap().body["status"],
        "cancelled",
        "ends well before the call would"
    );
    let row: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
        .bind(&running)
        .fetch_one(env.store().await?.pool())
        .await?;
    assert_eq!(row, "cancelled");
    let again = http
        .post(format!("{}/v1/jobs/{running}/cancel", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(again.status(), 409, "a finished job cannot be cancelled");
    stack.stop().await;
    Ok(())
}

/// The job row decides between a worker starting a job and the api ending it: the
/// attempt-started write claims only a job that has not ended, and writes no attempt for
/// one that has. Whatever a consumer has delivered, a cancelled job is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_started_write_refuses_a_job_the_api_ended() -> Result<()> {
    use sluice_core::store::{AttemptStarted, LedgerEntry, Written};
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let started = |job_id: uuid::Uuid| {
        LedgerEntry::Started(AttemptStarted {
            job_id,
            owner: "master".into(),
            model_group: "fast".into(),
            tier: "normal".into(),
            reply_subject: None,
            created_at: chrono::Utc::now(),
            delivery: 1,
            worker: "w".into(),
            deployment: "fast-0".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            started_at: chrono::Utc::now(),
            max_calls: 10,
            reserved_cost: None,
        })
    };
    let (ended, live) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let answers = store.write_ledger(&[started(ended), started(live)]).await?;
    assert_eq!(
        answers,
        vec![Written::Claimed(1), Written::Claimed(1)],
        "new jobs are claimed"
    );
    assert!(store.cancel_job(ended).await?);
    // The next attempt of each, in one batch: only the live job is claimed.
    let answers = store.write_ledger(&[started(ended), started(live)]).await?;
    assert_eq!(answers, vec![Written::Ended, Written::Claimed(2)]);
    let attempts = |id| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_attempts WHERE job_id = $1")
            .bind(id)
            .fetch_one(store.pool())
    };
    assert_eq!(
        attempts(ended).await?,
        1,
        "no attempt row for the refused start"
    );
    assert_eq!(attempts(live).await?, 2);
    let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(ended)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(
        status, "cancelled",
        "the refused start left the row as the api ended it"
    );
    Ok(())
}
