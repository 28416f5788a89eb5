//! No job stays unfinished when its queue message is gone: jobs wait in the jobs stream
//! while no worker runs, an operator deletes one job's message, and a worker started
//! later ends that job `failed` (row, terminal event and reply delivery) while the jobs
//! whose messages are still queued run.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use common::{models, read_events, wait_job, KEY};
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};
use sluice_worker::reconcile::{self, Reconciler};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_message_was_deleted_ends_failed_and_the_rest_run() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let config = env.config(&models(&sim), "  worker:\n    lost_message_grace_secs: 1")?;
    // The api only: the jobs wait in the stream.
    let mut stack = Stack::start(config, 0).await?;
    let http = reqwest::Client::new();
    let nats = async_nats::connect(&env.nats_url).await?;
    let reply_subject = format!("replies-{}.lost", env.prefix);
    let mut replies = nats.subscribe(reply_subject.clone()).await?;
    let lost: Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"model": "fast", "reply_subject": reply_subject,
            "messages": [{"role": "user", "content": "this message will be deleted"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let lost = lost["id"].as_str().context("no id")?.to_string();
    let kept = common::submit_many(&http, &stack.api_url, "fast", "normal", 5).await?;

    // Each published job has where its message sits in the jobs stream on record.
    let store = env.store().await?;
    let seq: i64 = eventually(
        Duration::from_secs(30),
        "stream sequences recorded",
        || async {
            let known: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs j JOIN job_stream_seqs s ON s.job_id = j.id
                 WHERE j.status = 'queued'",
            )
            .fetch_one(store.pool())
            .await
            .ok()?;
            if known < 6 {
                return None;
            }
            sqlx::query_scalar("SELECT seq FROM job_stream_seqs WHERE job_id = $1::uuid")
                .bind(&lost)
                .fetch_one(store.pool())
                .await
                .ok()
        },
    )
    .await?;

    // A long backlog is not a lost one: past the grace period, a reconciler round finds
    // every message still queued and ends nothing.
    let js = jetstream::new(nats.clone());
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconciler = Reconciler {
        js: js.clone(),
        store: store.clone(),
        subjects: subjects.clone(),
        prefix: env.prefix.clone(),
        safety: Default::default(),
        lost_grace: Duration::from_secs(1),
        deliveries: Default::default(),
    };
    let ended = reconcile::lost_round(&reconciler)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(ended, 0, "no message is gone yet");
    let (queued, checked): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'queued'),
                count(*) FILTER (WHERE seq_checked_at IS NOT NULL) FROM jobs",
    )
    .fetch_one(store.pool())
    .await?;
    assert_eq!((queued, checked), (6, 6), "all looked up, all left queued");

    // An operator deletes that job's message.
    let stream = js.get_stream(subjects.jobs_stream()).await?;
    let msg = stream.get_raw_message(seq as u64).await?;
    assert_eq!(
        msg.headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string()),
        Some(lost.clone()),
        "the recorded sequence holds the job's message"
    );
    assert!(stream.delete_message(seq as u64).await?, "message deleted");

    // Past the grace period, a worker starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.add_worker();

    let job = wait_job(&http, &stack.api_url, &lost, KEY).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "internal", "{job}");
    assert_eq!(job["error"]["message"], "queue message lost", "{job}");
    let events = read_events(&env, &lost).await?;
    let last = events.last().context("no events")?;
    assert_eq!(last.kind, "error", "{events:?}");
    assert_eq!(last.body["status"], "failed", "{:?}", last.body);
    assert_eq!(
        last.body["error"]["message"], "queue message lost",
        "{:?}",
        last.body
    );
    let reply = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .context("no reply delivered")?
        .context("reply subscription ended")?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["job_id"], lost.as_str(), "{reply}");
    assert_eq!(reply["status"], "failed", "{reply}");

    for id in &kept {
        let job = wait_job(&http, &stack.api_url, id, KEY).await?;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert_eq!(
        sim.requests(),
        kept.len() as u64,
        "the lost job made no call"
    );
    stack.stop().await;
    Ok(())
}
