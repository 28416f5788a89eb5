//! Webhooks: the terminal result is POSTed signed, retried after a 500, and the outcome
//! is recorded on the job.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::http::{HeaderMap, StatusCode};
use common::KEY;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

type Received = Arc<Mutex<Vec<(Option<String>, String)>>>;

async fn receiver(received: Received) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let received = received.clone();
            async move {
                let sig = headers
                    .get("sluice-signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let mut r = received.lock().unwrap();
                r.push((sig, body));
                // The first delivery fails: the worker must retry.
                if r.len() == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut parts = header.split(',');
    let t = parts
        .next()
        .and_then(|p| p.strip_prefix("t="))
        .unwrap_or_default();
    let v1 = parts
        .next()
        .and_then(|p| p.strip_prefix("v1="))
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap_or_default())
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_is_posted_signed_retried_after_a_500_and_recorded() -> Result<()> {
    let received: Received = Arc::default();
    let url = receiver(received.clone()).await?;
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(
            &common::models(&s),
            "  webhook_secret: whsec-test-123\n  safety:\n    webhook_allow_private: true",
        )?,
        1,
    )
    .await?;
    let http = reqwest::Client::new();
    let bad = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "x"}], "webhook_url": "ftp://nope"}))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await?["error"]["param"], "webhook_url");

    let v: Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "notify me"}], "webhook_url": url}))
        .send()
        .await?
        .json()
        .await?;
    let id = v["id"].as_str().unwrap().to_string();
    let r = received.clone();
    eventually(Duration::from_secs(30), "two deliveries", move || {
        let r = r.clone();
        async move { (r.lock().unwrap().len() >= 2).then_some(()) }
    })
    .await?;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    for (sig, body) in &got {
        let sig = sig.as_deref().expect("signed");
        assert!(verify("whsec-test-123", sig, body), "signature verifies");
        assert!(!verify("other-secret", sig, body));
        let done: Value = serde_json::from_str(body)?;
        assert_eq!(done["job_id"], id.as_str());
        assert_eq!(done["status"], "succeeded");
    }
    let store = env.store().await?;
    let pool = store.pool().clone();
    let id2 = uuid::Uuid::parse_str(&id)?;
    let (status, attempts) = eventually(Duration::from_secs(10), "outcome recorded", || async {
        let row: (Option<String>, Option<i32>) =
            sqlx::query_as("SELECT webhook_status, webhook_attempts FROM jobs WHERE id = $1")
                .bind(id2)
                .fetch_one(&pool)
                .await
                .ok()?;
        row.0.is_some().then_some(row)
    })
    .await?;
    assert_eq!(status.as_deref(), Some("delivered"));
    assert_eq!(attempts, Some(2));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_keys_jobs_are_signed_with_that_keys_own_secret() -> Result<()> {
    let received: Received = Arc::default();
    let url = receiver(received.clone()).await?;
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(
            &common::models(&s),
            "  webhook_secret: whsec-server-456\n  safety:\n    webhook_allow_private: true",
        )?,
        1,
    )
    .await?;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/keys", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = created["key"].as_str().unwrap();
    let secret = created["webhook_secret"]
        .as_str()
        .expect("shown at creation");
    assert!(secret.starts_with("whsec_") && secret != "whsec-server-456");
    let listed = http
        .get(format!("{}/v1/keys", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?
        .text()
        .await?;
    assert!(!listed.contains(secret), "shown once: {listed}");

    http.post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(key)
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "notify me"}], "webhook_url": url}))
        .send()
        .await?
        .error_for_status()?;
    let r = received.clone();
    eventually(Duration::from_secs(30), "two deliveries", move || {
        let r = r.clone();
        async move { (r.lock().unwrap().len() >= 2).then_some(()) }
    })
    .await?;
    for (sig, body) in received.lock().unwrap().iter() {
        let sig = sig.as_deref().expect("signed");
        assert!(verify(secret, sig, body), "the key's secret verifies");
        assert!(
            !verify("whsec-server-456", sig, body),
            "the server's does not"
        );
    }
    stack.stop().await;
    Ok(())
}
