//! Readiness follows the dependencies: with Postgres stopped, `/readyz` of the api and of
//! the worker answer 503 naming Postgres (while `/healthz` stays up); once it is back they
//! answer 200 again. Its own test binary with its own Postgres, which it stops.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use sluice_testkit::servers::{free_port, services, unique, OwnPostgres};
use sluice_testkit::{eventually, Stack};
use sqlx::Connection;

async fn ready(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let r = http.get(format!("{url}/readyz")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_postgres_is_stopped_and_recovers() -> Result<()> {
    let pg = OwnPostgres::start_new()?;
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE DATABASE sluice")
        .execute(&mut admin)
        .await?;
    drop(admin);
    let database_url = pg.url("sluice");
    sluice_core::Store::connect(&database_url, 2)
        .await?
        .migrate()
        .await?;

    let s = services();
    let port = free_port();
    let yaml = format!(
        "sluice:\n  nats_url: {}\n  redis_url: {}\n  database_url: {database_url}\n  subject_prefix: {}\n  metrics_addr: 127.0.0.1:{port}\n",
        s.nats_url,
        s.redis_url,
        unique("ready")
    );
    let config = sluice_core::Config::from_yaml(&yaml, Some("ready.yaml".into()), &|_: &str| None)?;
    let stack = Stack::start(config, 1).await?;
    let worker = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let limit = Duration::from_secs(30);

    for url in [&stack.api_url, &worker] {
        let (status, body) = eventually(limit, "ready", || async {
            ready(&http, url).await.filter(|(s, _)| *s == 200)
        })
        .await?;
        assert_eq!(status, 200);
        assert_eq!(body["postgres"], "ok");
    }

    pg.stop()?;
    for url in [&stack.api_url, &worker] {
        let (_, body) = eventually(limit, "not ready without Postgres", || async {
            ready(&http, url).await.filter(|(s, _)| *s == 503)
        })
        .await?;
        assert_eq!(body["ready"], false);
        assert_ne!(body["postgres"], "ok", "{body}");
        assert_eq!(body["nats"], "ok");
        assert_eq!(body["redis"], "ok");
        let health = http.get(format!("{url}/healthz")).send().await?;
        assert_eq!(health.status(), 200, "the process is still alive");
    }

    pg.start()?;
    for url in [&stack.api_url, &worker] {
        let (_, body) = eventually(limit, "ready again", || async {
            ready(&http, url).await.filter(|(s, _)| *s == 200)
        })
        .await?;
        assert_eq!(body["postgres"], "ok");
    }
    stack.stop().await;
    Ok(())
}
