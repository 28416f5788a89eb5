//! The fault suite: every job ends, nothing is lost, nothing is paid twice, under faults
//! that last. Each scenario runs jobs through real servers, injects its fault, waits for
//! every accepted job to end, and counts from Postgres and the provider simulator:
//!
//! - **lost**: accepted jobs with no row;
//! - **stuck**: jobs not ended by the deadline;
//! - **paid twice**: jobs with more than one successful (billed) call on the ledger;
//! - **attempt rows / provider calls**: one row per call the simulator saw. A worker killed
//!   between writing a call's row (before the call, by design) and the request reaching
//!   the provider leaves a row without a call; such rows stay `started` (outcome
//!   unknown), so the rows may exceed the calls by at most the rows cut short;
//! - **deliveries lost**: webhooks never received (webhook scenario).
//!
//! `scripts/test` runs it small (about a hundred jobs each); `scripts/chaos` runs it at
//! full size (`SLUICE_CHAOS=full`: 1,000 jobs, a receiver down for a minute) and prints
//! the rows (`CHAOS|…` lines) as a table. Each scenario asserts the figures it prints.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use common::{job, models, KEY};
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_testkit::servers::{find, free_port, services, unique, OwnPostgres};
use sluice_testkit::sim::{self, SimConfig, SimHandle};
use sluice_testkit::{eventually, Stack, TestEnv};
use sqlx::Connection;
use uuid::Uuid;

struct Scale {
    jobs: usize,
    receiver_down: Duration,
    deadline: Duration,
}

fn scale() -> Scale {
    if std::env::var("SLUICE_CHAOS").as_deref() == Ok("full") {
        Scale {
            jobs: 1000,
            receiver_down: Duration::from_secs(60),
            deadline: Duration::from_secs(600),
        }
    } else {
        Scale {
            jobs: 100,
            receiver_down: Duration::from_secs(8),
            deadline: Duration::from_secs(240),
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Default)]
struct Tally {
    scenario: &'static str,
    jobs: usize,
    lost: usize,
    stuck: usize,
    paid_twice: i64,
    attempt_rows: i64,
    provider_calls: u64,
    /// Rows of calls cut short by a kill (still `started`).
    cut_short: i64,
    deliveries_lost: usize,
}

impl Tally {
    /// Prints the row and asserts the promise.
    fn check(&self) {
        println!(
            "\nCHAOS|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.scenario,
            self.jobs,
            self.lost,
            self.stuck,
            self.paid_twice,
            self.attempt_rows,
            self.provider_calls,
            self.cut_short,
            self.deliveries_lost
        );
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(self.stuck, 0, "{self:?}");
        assert_eq!(self.paid_twice, 0, "{self:?}");
        // Every call has its row; a row without a call is one cut short before sending.
        let rows = self.attempt_rows as u64;
        assert!(
            rows >= self.provider_calls,
            "a call without a row: {self:?}"
        );
        assert!(
            rows - self.provider_calls <= self.cut_short as u64,
            "rows without calls that were not cut short: {self:?}"
        );
        assert_eq!(self.deliveries_lost, 0, "{self:?}");
    }
}

/// Waits until every one of `ids` ended (or `deadline`), then counts.
async fn tally(
    scenario: &'static str,
    pool: &sqlx::PgPool,
    ids: &[Uuid],
    sim: &SimHandle,
    deadline: Duration,
) -> Result<Tally> {
    let ended = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM jobs WHERE id = ANY($1)
               AND status IN ('succeeded','failed','cancelled','expired')",
        )
        .bind(ids)
        .fetch_one(pool)
        .await
        .ok()
    };
    let _ = eventually(deadline, "every job to end", || async {
        (ended().await? == ids.len() as i64).then_some(())
    })
    .await;
    // Calls in flight when the counting starts are answered first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await?;
    let done = ended().await.unwrap_or(0);
    let paid_twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE job_id = ANY($1)
           AND status = 'succeeded' GROUP BY job_id HAVING count(*) > 1) AS t",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    let attempt_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = ANY($1)")
            .bind(ids)
            .fetch_one(pool)
            .await?;
    let cut_short: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_attempts WHERE job_id = ANY($1) AND status = 'started'",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok(Tally {
        scenario,
        jobs: ids.len(),
        lost: ids.len() - rows as usize,
        stuck: (rows - done) as usize,
        paid_twice,
        attempt_rows,
        provider_calls: sim.requests(),
        cut_short,
        deliveries_lost: 0,
    })
}

/// Submits `n` jobs of `body` to `api`, 32 at a time; returns the ids accepted.
async fn submit(http: &reqwest::Client, api: &str, n: usize, body: Value) -> Vec<Uuid> {
    futures::stream::iter(0..n)
        .map(|i| {
            let (http, mut body) = (http.clone(), body.clone());
            body["messages"] = json!([{"role": "user", "content": format!("chaos {i}")}]);
            let url = format!("{api}/v1/jobs");
            async move {
                let v: Value = http
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                    .ok()?
                    .error_for_status()
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok())
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0)
}

fn slow_sim() -> SimConfig {
    SimConfig {
        latency_ms: 300,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_jobs_in_flight_survive_three_worker_sigkills() -> Result<()> {
    let s = scale();
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 1500,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let extra = "  worker:\n    capacity: 25\n    ack_wait_secs: 3";
    let path = env.write_config(&models(&sim), extra)?;
    let stack = Stack::start(env.config(&models(&sim), extra)?, 0).await?;
    let store = env.store().await?;
    let mut workers = vec![
        common::spawn_worker(&path)?,
        common::spawn_worker(&path)?,
        common::spawn_worker(&path)?,
    ];
    let http = reqwest::Client::new();
    let ids = submit(&http, &stack.api_url, s.jobs, job("fast", false)).await;
    // Three SIGKILLs, each while calls are in flight; a fresh worker replaces each.
    for _ in 0..3 {
        eventually(Duration::from_secs(60), "calls in flight", || async {
            let n = count(
                store.pool(),
                "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id
                 WHERE a.status = 'started' AND j.status = 'running'",
            )
            .await;
            (n > 0).then_some(())
        })
        .await?;
        let mut victim = workers.remove(0);
        victim.kill().await?;
        workers.push(common::spawn_worker(&path)?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tally(
        "1 jobs in flight, three worker SIGKILLs",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?
    .check();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_api_killed_between_record_and_publish() -> Result<()> {
    let s = scale();
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let path = env.write_config(&models(&sim), "")?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let mut ids = submit(&http, &stack.api_url, s.jobs / 2, job("fast", false)).await;
    // Three api processes, each SIGKILLed (exit 137) right after recording a job.
    for n in 0..3 {
        let port = free_port();
        let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&path)
            .arg("api")
            .env("SLUICE_API_ADDR", format!("127.0.0.1:{port}"))
            .env("SLUICE_FAULT_EXIT_AT", "after_record")
            .env("RUST_LOG", "error")
            .env_remove("SLUICE_MASTER_KEY")
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "api ready", || async {
            let r = http.get(format!("{url}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await?;
        let key = format!("chaos-{n}");
        let answer = http
            .post(format!("{url}/v1/jobs"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", &key)
            .json(&job("fast", false))
            .send()
            .await;
        assert!(answer.is_err(), "the api died at the fault point");
        let status = tokio::time::timeout(Duration::from_secs(10), doomed.wait()).await??;
        assert_eq!(status.code(), Some(137));
        // The client retries with its key on a healthy api: the same job.
        let v: Value = http
            .post(format!("{}/v1/jobs", stack.api_url))
            .bearer_auth(KEY)
            .header("Idempotency-Key", &key)
            .json(&job("fast", false))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(Uuid::parse_str(v["id"].as_str().context("id")?)?);
    }
    ids.extend(submit(&http, &stack.api_url, s.jobs / 2, job("fast", false)).await);
    tally(
        "2 api SIGKILLed between record and publish",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?
    .check();
    stack.stop().await;
    Ok(())
}

/// A nats-server of this scenario's own, which it stops and starts again on the same
/// port and store directory.
struct OwnNats {
    port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnNats {
    fn start_new() -> Result<OwnNats> {
        let dir = services().root.join(unique("ownnats"));
        std::fs::create_dir_all(&dir)?;
        let mut n = OwnNats {
            port: free_port(),
            dir,
            child: None,
        };
        n.start()?;
        Ok(n)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) -> Result<()> {
        let bin = find(
            "nats-server",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )?;
        self.child = Some(
            tokio::process::Command::new(bin)
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                ])
                .arg(&self.dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "nats did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_nats_down_longer_than_ack_wait() -> Result<()> {
    let s = scale();
    let sim = sim::start("127.0.0.1:0", slow_sim()).await?;
    let mut nats = OwnNats::start_new()?;
    let mut env = TestEnv::new().await?;
    env.nats_url = nats.url();
    let ack_wait = 2;
    let extra = format!("  worker:\n    capacity: 20\n    ack_wait_secs: {ack_wait}");
    let mut stack = Stack::start(env.config(&models(&sim), &extra)?, 0).await?;
    stack.add_worker();
    stack.add_worker();
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let mut ids = submit(&http, &stack.api_url, s.jobs, job("fast", false)).await;
    eventually(Duration::from_secs(60), "jobs running", || async {
        (count(
            store.pool(),
            "SELECT count(*) FROM jobs WHERE status = 'succeeded'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await?;
    nats.kill().await?;
    // Submissions go on while NATS is down: the outbox holds them.
    ids.extend(submit(&http, &stack.api_url, 10, job("fast", false)).await);
    tokio::time::sleep(Duration::from_secs(ack_wait * 3)).await;
    nats.start()?;
    tally(
        "3 NATS down longer than AckWait",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?
    .check();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_postgres_restarted_mid_write() -> Result<()> {
    let s = scale();
    let sim = sim::start("127.0.0.1:0", slow_sim()).await?;
    let pg = OwnPostgres::start_new()?;
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE DATABASE sluice")
        .execute(&mut admin)
        .await?;
    drop(admin);
    let mut env = TestEnv::new().await?;
    env.database_url = pg.url("sluice");
    sluice_core::Store::connect(&env.database_url, 2)
        .await?
        .migrate()
        .await?;
    let extra = "  worker:\n    capacity: 50";
    let stack = Stack::start(env.config(&models(&sim), extra)?, 2).await?;
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let ids = submit(&http, &stack.api_url, s.jobs, job("fast", false)).await;
    eventually(Duration::from_secs(60), "jobs being written", || async {
        (count(
            store.pool(),
            "SELECT count(*) FROM jobs WHERE status = 'succeeded'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await?;
    pg.stop()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start()?;
    let store = env.store().await?;
    tally(
        "4 Postgres restarted mid-write",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?
    .check();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_redis_wiped_while_budgets_are_spent() -> Result<()> {
    let s = scale();
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // A provider budget of about ten calls a day; the rest of the jobs wait, until their
    // wait is over (they end `wait_exceeded`).
    let models = format!(
        "{}router_settings:\n  provider_budget_config:\n    openai:\n      budget_limit: 0.0003\n      time_period: 1d\n",
        models(&sim)
    );
    let extra = "  limits:\n    max_defer_secs: 1\n    max_wait_secs: 20";
    let stack = Stack::start(env.config(&models, extra)?, 2).await?;
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let mut body = job("fast", false);
    body["max_tokens"] = json!(10);
    let ids = submit(&http, &stack.api_url, s.jobs.min(50), body).await;
    eventually(Duration::from_secs(60), "the budget spent", || async {
        let waiting = count(
            store.pool(),
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND not_before IS NOT NULL",
        )
        .await;
        (waiting > 0).then_some(())
    })
    .await?;
    // Calls admitted before the budget ran out reach the provider.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent_before = sim.requests();
    // Redis loses every counter of this test.
    let client = deadpool_redis::redis::Client::open(env.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
        .arg(format!("{{{}}}*", env.prefix))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        deadpool_redis::redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    let t = tally(
        "5 Redis wiped while budgets are spent",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?;
    assert_eq!(
        sim.requests(),
        spent_before,
        "no call after Redis lost the spend"
    );
    let over: i64 = count(
        store.pool(),
        "SELECT count(*) FROM jobs WHERE status = 'failed' AND error_class <> 'wait_exceeded'",
    )
    .await;
    assert_eq!(over, 0, "jobs end by running or by their wait");
    let spent: f64 =
        sqlx::query_scalar::<_, Option<f64>>("SELECT sum(cost)::float8 FROM job_attempts")
            .fetch_one(store.pool())
            .await?
            .unwrap_or(0.0);
    assert!(spent <= 0.0003, "the budget held: {spent} spent of 0.0003");
    t.check();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_worker_killed_during_a_batch() -> Result<()> {
    let s = scale();
    let sim = sim::start("127.0.0.1:0", slow_sim()).await?;
    let env = TestEnv::new().await?;
    let extra = "  worker:\n    capacity: 50\n    ack_wait_secs: 3\n  batches:\n    poll_ms: 100";
    let path = env.write_config(&models(&sim), extra)?;
    let stack = Stack::start(env.config(&models(&sim), extra)?, 0).await?;
    let store = env.store().await?;
    let mut worker = common::spawn_worker(&path)?;
    let http = reqwest::Client::new();
    let lines: String = (0..s.jobs)
        .map(|i| {
            let v = json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "fast", "max_tokens": 8, "messages": [{"role": "user", "content": format!("say {i}")}]}});
            format!("{v}\n")
        })
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(lines.into_bytes()).file_name("input.jsonl"),
        );
    let file: Value = http
        .post(format!("{}/v1/files", stack.api_url))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let batch: Value = http
        .post(format!("{}/v1/batches", stack.api_url))
        .bearer_auth(KEY)
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let batch_id = batch["id"].as_str().context("batch id")?.to_string();
    // Killed mid-batch: lines done, lines in flight, lines queued.
    let mid = (s.jobs / 5) as u64;
    eventually(Duration::from_secs(120), "the batch half-way", || async {
        (sim.requests() >= mid).then_some(())
    })
    .await?;
    worker.kill().await?;
    let _worker = common::spawn_worker(&path)?;
    eventually(s.deadline, "the batch to complete", || async {
        let v: Value = http
            .get(format!("{}/v1/batches/{batch_id}", stack.api_url))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "completed").then_some(())
    })
    .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1")
        .bind(&batch_id)
        .fetch_all(store.pool())
        .await?;
    let mut t = tally(
        "6 worker SIGKILLed during a batch",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?;
    t.lost += s.jobs - ids.len();
    t.jobs = s.jobs;
    t.check();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_webhook_receiver_down_for_a_while() -> Result<()> {
    let s = scale();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 2).await?;
    let store = env.store().await?;
    let http = reqwest::Client::new();
    let mut body = job("fast", false);
    body["webhook_url"] = json!(url);
    let ids = submit(&http, &stack.api_url, s.jobs, body).await;
    // The receiver is down for a while, then comes back.
    tokio::time::sleep(s.receiver_down).await;
    let received: Arc<Mutex<HashSet<String>>> = Arc::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let r = r.clone();
            async move {
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    if let Some(id) = v["job_id"].as_str() {
                        r.lock().unwrap().insert(id.to_string());
                    }
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut t = tally(
        "7 webhook receiver down",
        store.pool(),
        &ids,
        &sim,
        s.deadline,
    )
    .await?;
    let n = ids.len();
    let _ = eventually(s.deadline, "every webhook delivered", || async {
        (received.lock().unwrap().len() == n).then_some(())
    })
    .await;
    t.deliveries_lost = n - received.lock().unwrap().len();
    t.check();
    stack.stop().await;
    Ok(())
}
