//! Deliveries are durable: a job's webhook survives the worker that ran the job (killed
//! while the receiver was down) and is delivered once the receiver is back, by another
//! worker; the outcome is recorded on the job. A reply subject gets the end the same way.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use common::KEY;
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_outlives_its_worker_and_a_receiver_that_was_down() -> Result<()> {
    // The receiver's port, with nobody listening yet.
    let port = sluice_testkit::servers::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // The receiver is on loopback: the operator allows private webhook destinations.
    let safety = "  safety: {webhook_allow_private: true}";
    let path = env.write_config(&common::models(&sim), safety)?;
    let mut stack = Stack::start(env.config(&common::models(&sim), safety)?, 0).await?;
    let store = env.store().await?;
    let mut first = common::spawn_worker(&path)?;

    let client = async_nats::connect(&env.nats_url).await?;
    let mut replies = client.subscribe("orders.llm.done").await?;
    client.flush().await?;
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .json(
            &json!({"model": "fast", "messages": [{"role": "user", "content": "hook me"}],
            "webhook_url": url, "reply_subject": "orders.llm.done"}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = v["id"].as_str().context("id")?.to_string();

    // The job ends; its webhook fails while the receiver is down. A try counts once its
    // failure is recorded: a claimed try holds the row for the 60 s lease
    // (`worker/src/deliveries.rs`), a failed one is due again within seconds.
    eventually(Duration::from_secs(60), "webhook retrying", || async {
        let tries: i32 = sqlx::query_scalar(
            "SELECT attempts FROM job_deliveries WHERE job_id = $1::uuid AND kind = 'webhook'
               AND last_error IS NOT NULL AND next_at < now() + interval '30 seconds'",
        )
        .bind(&id)
        .fetch_one(store.pool())
        .await
        .ok()?;
        (tries >= 2).then_some(())
    })
    .await?;
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await?
        .context("reply subscription ended")?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["status"], "succeeded", "{reply}");
    // The worker that ran it dies; another takes over the delivery.
    first.kill().await?;
    stack.add_worker();

    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // The killed worker may still have held a claim on a try: the lease (60 s) passes
    // first, then another worker delivers.
    eventually(
        Duration::from_secs(150),
        "the webhook delivered",
        || async { (!received.lock().unwrap().is_empty()).then_some(()) },
    )
    .await?;
    let body: Value = serde_json::from_str(&received.lock().unwrap()[0])?;
    assert_eq!(body["job_id"], json!(id));
    assert_eq!(body["status"], "succeeded");
    eventually(
        Duration::from_secs(30),
        "the outcome on the job",
        || async {
            let (status, tries): (Option<String>, Option<i32>) = sqlx::query_as(
                "SELECT webhook_status, webhook_attempts FROM jobs WHERE id = $1::uuid",
            )
            .bind(&id)
            .fetch_one(store.pool())
            .await
            .ok()?;
            (status.as_deref() == Some("delivered") && tries >= Some(3)).then_some(())
        },
    )
    .await?;
    stack.stop().await;
    Ok(())
}
