//! Submit is atomic in effect: an api that dies between recording a job and publishing it
//! leaves the job in the outbox, a worker's reconciler publishes it, and the job runs. An
//! idempotent retry meanwhile finds that job, which then runs.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{models, wait_job, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_between_record_and_publish_still_runs_the_job() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let path = env.write_config(&models(&sim), "")?;
    // An api process that dies right after the job row is recorded.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .arg("api")
        .env("SLUICE_API_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE_FAULT_EXIT_AT", "after_record")
        .env("RUST_LOG", "error")
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let doomed_url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "api ready", || async {
        let r = http.get(format!("{doomed_url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    let body =
        json!({"model": "fast", "messages": [{"role": "user", "content": "outlive the api"}]});
    let answer = http
        .post(format!("{doomed_url}/v1/jobs"))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "order-42")
        .json(&body)
        .send()
        .await;
    assert!(answer.is_err(), "the api died before answering: {answer:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), doomed.wait()).await??;
    assert_eq!(
        status.code(),
        Some(137),
        "the api exited at the fault point"
    );

    // The row is recorded and queued, and nothing was published.
    let store = env.store().await?;
    let (id, row_status): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, status FROM jobs WHERE idempotency_key = 'order-42'")
            .fetch_one(store.pool())
            .await?;
    assert_eq!(row_status, "queued");

    // A healthy api and a worker. The client retries with its idempotency key: the same
    // job, which runs.
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let again: Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "order-42")
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(again["id"].as_str().context("no id")?, id.to_string());
    let job = wait_job(&http, &stack.api_url, &id.to_string(), KEY).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(sim.requests(), 1, "run once");
    // The reconciler's publish recorded where the message sat in the jobs stream (after
    // its publish: the job may finish first).
    eventually(
        Duration::from_secs(30),
        "stream sequence recorded",
        || async {
            let seq: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM job_stream_seqs WHERE job_id = $1")
                    .bind(id)
                    .fetch_optional(store.pool())
                    .await
                    .ok()?;
            seq.is_some_and(|s| s > 0).then_some(())
        },
    )
    .await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(store.pool())
        .await?;
    eventually(Duration::from_secs(30), "outbox drained", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
            .fetch_one(store.pool())
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await
    .with_context(|| format!("{left} outbox rows left"))?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_job_leaves_nothing_in_the_outbox() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let ids = common::submit_many(&http, &stack.api_url, "fast", "normal", 20).await?;
    let store = env.store().await?;
    common::wait_terminal(store.pool(), 20, Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(10), "outbox empty", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
            .fetch_one(store.pool())
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await?;
    assert_eq!(sim.requests(), ids.len() as u64, "each job called once");
    // Each acknowledged publish recorded its own stream sequence.
    let seqs: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT s.seq FROM jobs j LEFT JOIN job_stream_seqs s ON s.job_id = j.id",
    )
    .fetch_all(store.pool())
    .await?;
    let distinct: std::collections::HashSet<i64> = seqs.iter().flatten().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "one sequence per job: {seqs:?}");
    stack.stop().await;
    Ok(())
}

/// `jobs`' sequential and index scans so far, as the statistics collector has them.
async fn jobs_scans(conn: &mut sqlx::PgConnection) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'jobs'",
    )
    .fetch_one(conn)
    .await?)
}

/// The reconciler's sweep runs every few seconds on every worker, and `jobs` only grows:
/// it reads the jobs of the outbox's oldest entries by key, never the whole table, even
/// when the planner believes the outbox is large (its statistics taken while a burst of
/// submissions was in flight, as after a busy minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_sweep_reads_jobs_by_key_however_many_there_are() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let pool = store.pool();
    // Set up on one connection, whose statistics are flushed before the sweep runs.
    let mut conn = pool.acquire().await?;
    // 20,000 finished jobs, each with an outbox entry, and statistics taken then.
    sqlx::query(
        "INSERT INTO jobs (id, model_group, tier, status, calls, created_at)
         SELECT gen_random_uuid(), 'fast', 'normal', 'succeeded', 1, now() - interval '1 hour'
         FROM generate_series(1, 20000)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO job_outbox (job_id, subject, payload, created_at)
         SELECT id, 'sluice.jobs.normal', '{}', now() - interval '1 hour' FROM jobs",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("ANALYZE jobs").execute(&mut *conn).await?;
    sqlx::query("ANALYZE job_outbox")
        .execute(&mut *conn)
        .await?;
    // Then the apis drained the outbox but for three entries, and three new jobs came:
    // one left behind by its api (old, queued, never called), one that moved on without
    // its entry being dropped (old, running), and one its api still holds (young).
    sqlx::query("DELETE FROM job_outbox")
        .execute(&mut *conn)
        .await?;
    let left_behind = uuid::Uuid::now_v7();
    let moved_on = uuid::Uuid::now_v7();
    let young = uuid::Uuid::now_v7();
    for (id, status, calls, age) in [
        (left_behind, "queued", 0, "1 minute"),
        (moved_on, "running", 1, "1 minute"),
        (young, "queued", 0, "0 seconds"),
    ] {
        sqlx::query(
            "INSERT INTO jobs (id, model_group, tier, status, calls, created_at)
             VALUES ($1, 'fast', 'normal', $2, $3, now() - $4::interval)",
        )
        .bind(id)
        .bind(status)
        .bind(calls)
        .bind(age)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO job_outbox (job_id, subject, payload, created_at)
             VALUES ($1, 'sluice.jobs.normal', '{}', now() - $2::interval)",
        )
        .bind(id)
        .bind(age)
        .execute(&mut *conn)
        .await?;
    }
    // A backend flushes its statistics in its own time; this one, when it next goes idle
    // (before the read below), so `before` counts the set-up's scans.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await?;
    let before = jobs_scans(&mut conn).await?;

    let due = store.outbox_due(Duration::from_secs(10), 500).await?;
    let due: Vec<uuid::Uuid> = due.iter().map(|r| r.job_id).collect();
    assert_eq!(
        due,
        vec![left_behind],
        "only the old, queued, uncalled entry is due"
    );
    let mut left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT job_id FROM job_outbox")
        .fetch_all(pool)
        .await?;
    left.sort();
    let mut want = vec![left_behind, young];
    want.sort();
    assert_eq!(left, want, "the moved-on entry is dropped, the others stay");

    // The sweep's reads of `jobs` show up in the statistics once its backend flushes them
    // (within seconds): by index, and no sequential scan.
    let after = eventually(
        Duration::from_secs(30),
        "the sweep's scans counted",
        || async {
            let now = jobs_scans(&mut *pool.acquire().await.ok()?).await.ok()?;
            (now != before).then_some(now)
        },
    )
    .await?;
    assert_eq!(
        after.0, before.0,
        "no sequential scan of jobs (index scans {} -> {})",
        before.1, after.1
    );
    Ok(())
}
