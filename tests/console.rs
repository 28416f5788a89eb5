//! The operators' console (`/ui`) in a real browser: Debian's `chromium`, driven by
//! Playwright from PyPI (`tests/python/console.py`, run with the `.venv` that scripts/test
//! prepares), against a whole stack started here. Each test is one scenario of the script;
//! the script answers with a JSON summary, checked here against the database. Screenshots
//! land in `target/console/`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::KEY;
use serde_json::Value;
use sluice_testkit::sim::{self, Fault, SimConfig, SimHandle};
use sluice_testkit::{Stack, TestEnv};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";

fn python() -> Result<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !venv.is_file() || !std::path::Path::new(CHROMIUM).is_file() {
        bail!(
            "{} or {CHROMIUM} is missing: run scripts/test (it installs chromium and creates the venv with playwright)",
            venv.display()
        );
    }
    Ok(venv)
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console")
}

/// Group `fast` (priced), group `tight`, whose one deployment takes a request a minute,
/// and group `stormy`, whose one deployment is always overloaded (on `storm`).
fn models(sim: &SimHandle, storm: &SimHandle) -> String {
    format!(
        "model_list:
  - model_name: fast
    litellm_params:
      model: openai/sim-model
      api_base: {base}
      api_key: sk-test-secret-key-123456
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      id: sim-1
  - model_name: tight
    litellm_params:
      model: openai/sim-model
      api_base: {base}
      api_key: sk-test-secret-key-123456
      rpm: 1
    model_info:
      id: tight-1
  - model_name: stormy
    litellm_params:
      model: openai/sim-model
      api_base: {storm}
      api_key: sk-test-secret-key-123456
      cooldown_time: 60
    model_info:
      id: storm-1
general_settings:
  master_key: {KEY}
",
        base = sim.api_base(),
        storm = storm.api_base(),
    )
}

/// A provider that answers every call with 529 (overloaded).
async fn storm() -> Result<SimHandle> {
    Ok(sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1_000_000,
            fault: Some(Fault::Overloaded529),
            ..Default::default()
        },
    )
    .await?)
}

/// Runs one scenario of the browser script against `stack`; answers its requests
/// (`@add-worker`) and returns its JSON summary.
async fn drive(stack: &mut Stack, scenario: &str) -> Result<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/console.py");
    let mut child = tokio::process::Command::new(python()?)
        .arg(script)
        .arg(scenario)
        .env("BASE_URL", &stack.api_url)
        .env("MASTER_KEY", KEY)
        .env("SHOTS", shots())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the browser script")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut last = String::new();
    let talk = async {
        while let Some(line) = lines.next_line().await? {
            match line.as_str() {
                "@add-worker" => {
                    stack.add_worker();
                    stdin.write_all(b"ok\n").await?;
                    stdin.flush().await?;
                }
                _ => last = line,
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(600), talk)
        .await
        .context("the browser script did not finish in 10 minutes")??;
    let status = child.wait().await?;
    if !status.success() {
        bail!(
            "browser scenario {scenario} failed ({status}); screenshots in {}; last output: {last}",
            shots().display()
        );
    }
    serde_json::from_str(&last).with_context(|| format!("summary of {scenario}: {last}"))
}

async fn status_of(pool: &sqlx::PgPool, id: &Value) -> Result<String> {
    let id: uuid::Uuid = id.as_str().context("job id")?.parse()?;
    Ok(
        sqlx::query_scalar("SELECT status::text FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_queue_depth_rising_as_jobs_arrive_and_falling_as_a_worker_drains_it(
) -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let storm = storm().await?;
    let mut stack = Stack::start(env.config(&models(&s, &storm), "")?, 0).await?;
    let out = drive(&mut stack, "queue").await?;
    let store = env.store().await?;
    for id in out["high"]
        .as_array()
        .into_iter()
        .chain(out["low"].as_array())
        .flatten()
    {
        assert_eq!(status_of(store.pool(), id).await?, "succeeded", "{out}");
    }
    let tight = out["tight"].as_array().context("tight jobs")?;
    let mut statuses = Vec::new();
    for id in tight {
        statuses.push(status_of(store.pool(), id).await?);
    }
    assert!(
        statuses.iter().any(|s| s == "queued"),
        "one job waits for the rpm limit: {statuses:?}"
    );
    // The error class the job page showed is the attempt's, as recorded.
    let stormy: uuid::Uuid = out["stormy"].as_str().context("stormy id")?.parse()?;
    let class: Option<String> = sqlx::query_scalar(
        "SELECT error_class::text FROM job_attempts WHERE job_id = $1 AND attempt = 1",
    )
    .bind(stormy)
    .fetch_one(store.pool())
    .await?;
    assert_eq!(class.as_deref(), out["error_class"].as_str(), "{out}");
    assert_eq!(class.as_deref(), Some("overloaded"));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_streams_a_running_jobs_tokens_and_cancels_a_job() -> Result<()> {
    let s = sim::start(
        "127.0.0.1:0",
        SimConfig {
            // 20 s per stream: time to watch it, and to cancel one on a loaded machine.
            chunks: 160,
            chunk_interval_ms: 125,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let storm = storm().await?;
    let mut stack = Stack::start(env.config(&models(&s, &storm), "")?, 1).await?;
    let out = drive(&mut stack, "stream").await?;
    let store = env.store().await?;
    assert_eq!(status_of(store.pool(), &out["watched"]).await?, "succeeded");
    assert_eq!(
        status_of(store.pool(), &out["cancelled"]).await?,
        "cancelled"
    );
    let live = out["live"]["chunks"].as_u64().context("chunks")?;
    assert!(
        (3..160).contains(&live),
        "tokens were on screen before the end: {out}"
    );
    assert_eq!(out["final_words"], 160, "{out}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_batch_progressing_cancels_it_and_downloads_its_files() -> Result<()> {
    let s = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 700,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let storm = storm().await?;
    let mut stack = Stack::start(
        env.config(&models(&s, &storm), "  worker:\n    capacity: 2\n")?,
        1,
    )
    .await?;
    let out = drive(&mut stack, "batch").await?;
    let store = env.store().await?;
    let (status, total): (String, i32) =
        sqlx::query_as("SELECT status::text, total FROM batches WHERE id = $1")
            .bind(out["batch"].as_str().context("batch id")?)
            .fetch_one(store.pool())
            .await?;
    assert_eq!(status, "cancelled");
    assert_eq!(total, 40);
    let completed = out["completed"].as_u64().context("completed")?;
    let cancelled = out["cancelled"].as_u64().context("cancelled")?;
    assert!(completed >= 2 && cancelled > 0, "cancelled mid-way: {out}");
    assert_eq!(completed + cancelled, 40, "{out}");
    // The downloaded files hold every line: the results, and the lines that never ran.
    assert_eq!(out["output_lines"].as_u64(), Some(completed), "{out}");
    assert_eq!(out["error_lines"].as_u64(), Some(cancelled), "{out}");
    let ran: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND batch_id = $1",
    )
    .bind(out["batch"].as_str().context("batch id")?)
    .fetch_one(store.pool())
    .await?;
    assert_eq!(
        ran as u64, completed,
        "the console's count is the database's"
    );
    assert!(
        out["error_codes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "batch_cancelled")),
        "{out}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_key_signed_in_to_the_console_sees_only_its_own_jobs() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let storm = storm().await?;
    let mut stack = Stack::start(env.config(&models(&s, &storm), "")?, 1).await?;
    // The page itself needs no key (it holds none) and allows only its own scripts.
    let page = reqwest::get(format!("{}/ui", stack.api_url)).await?;
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await?.contains("type=\"password\""));
    let out = drive(&mut stack, "keys").await?;
    let team_a = out["keys"]["team-a"].as_str().context("team-a id")?;
    let direct = &out["direct"];
    assert_eq!(direct["master_jobs"], 0, "{out}");
    assert_eq!(direct["other_job"], 404, "{out}");
    assert_eq!(direct["keys"], 403, "{out}");
    assert_eq!(direct["overview"], 403, "{out}");
    assert_eq!(direct["spend_groups"], serde_json::json!([team_a]), "{out}");
    assert_eq!(
        direct["batches"], 0,
        "the master's batch is not listed: {out}"
    );
    let store = env.store().await?;
    let master_batches: i64 =
        sqlx::query_scalar("SELECT count(*) FROM batches WHERE owner = 'master'")
            .fetch_one(store.pool())
            .await?;
    assert_eq!(master_batches, 1, "there was a batch to hide");
    // The two jobs listed are the key's own, as the database records them.
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT owner FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY owner")
            .bind(
                out["listed"]
                    .as_array()
                    .context("listed")?
                    .iter()
                    .filter_map(|v| v.as_str()?.parse::<uuid::Uuid>().ok())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(store.pool())
            .await?;
    assert_eq!(owners, [team_a, team_a]);
    // Revoked from the console: gone for the API too.
    let team_b = out["keys"]["team-b"].as_str().context("team-b id")?;
    let revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1")
            .bind(team_b)
            .fetch_one(store.pool())
            .await?;
    assert!(revoked);
    stack.stop().await;
    Ok(())
}
