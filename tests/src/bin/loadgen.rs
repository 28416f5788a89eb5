//! `loadgen`: submits jobs to a running Sluice and prints one JSON summary of what it saw.
//!
//! Jobs go in through the HTTP API (`POST /v1/jobs`) or straight to JetStream (the job
//! envelope on `<prefix>.jobs.<tier>`), at a target rate (open loop: job `i` is due at
//! `i / rate` seconds) or as fast as `--concurrency` submitters can go. The mix of tiers,
//! streaming and prompt sizes is deterministic for a given `--seed`.
//!
//! Completions are followed through ONE core-NATS subscription on `<prefix>.events.>`
//! (terminal `done`/`error` events, and `chunk` events for chunk lag). After the run the
//! per-stage times are read from what Sluice recorded in Postgres. How each stage is
//! measured (all clocks are this machine's wall clock):
//!
//! | stage | from → to | source |
//! |---|---|---|
//! | `submit` | request sent → 202 (HTTP) or JetStream publish ack (NATS) | loadgen |
//! | `queue_wait` | `jobs.created_at` → `job_attempts.started_at` of attempt 1 (the Redis `TIME` at which the admission script counted the call: delivery, parse and the admission script up to that point) | Postgres |
//! | `admission` | attempt `started_at` → provider call start (`finished_at − latency_ms`): the rest of the admission round trip and the attempt-started ledger write (group commit) | Postgres |
//! | `provider` | the provider call as the worker timed it (`job_attempts.latency_ms`) | Postgres |
//! | `publish_record` | attempt `finished_at` → terminal event received here: settle (Redis), result and cost write (group commit), terminal event publish + ack, delivery | Postgres + loadgen |
//! | `end_to_end` | request sent → terminal event received | loadgen |
//! | `overhead` | `end_to_end − provider`: everything Sluice adds to the simulator's time | both |
//! | `overhead_vs_nominal` | `end_to_end − --sim-ms` (the simulator's scripted time), when given | both |
//!
//! `queue_wait` and `admission` split at a millisecond timestamp, so each is ±1 ms; their
//! sum and every other figure is microsecond-precise. Chunk lag (`--sim` started with
//! `--stamp-chunks`) is "chunk received here − the simulator's send stamp in the chunk".
//! With `--redis-url` / `--database-url` the summary also has Redis commands and Postgres
//! statements per completed job over the run (everything every client sent, amortised).
#![forbid(unsafe_code)]

/// mimalloc, as in the sluice binary (`src/main.rs`): this tool shares the cores with
/// what it measures, so its own cost per chunk is kept low.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_schemas::openai::ChatRequest;
use sluice_schemas::{JobEnvelope, Subjects, Tier};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Via {
    /// `POST /v1/jobs`
    Http,
    /// The envelope published straight to `<prefix>.jobs.<tier>`.
    Nats,
    /// Synchronous `POST /v1/chat/completions` (an OpenAI-compatible endpoint, Sluice's
    /// facade or a peer proxy): end to end is request sent → whole response read; no
    /// events, no Postgres stages.
    Openai,
}

#[derive(Parser, Debug)]
#[command(about = "Load generator for Sluice: submits jobs, follows them, prints a JSON summary")]
struct Args {
    /// Jobs to submit.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Target submissions per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Submissions in flight at most (HTTP requests or unacked publishes).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    #[arg(long, value_enum, default_value_t = Via::Http)]
    via: Via,
    #[arg(long, env = "SLUICE_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    #[arg(long, env = "SLUICE_MASTER_KEY", default_value = "")]
    key: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "sluice")]
    prefix: String,
    /// Model groups, used round robin.
    #[arg(long, default_value = "demo", value_delimiter = ',')]
    models: Vec<String>,
    /// Share of streaming jobs, 0..=1.
    #[arg(long, default_value_t = 0.5)]
    stream_share: f64,
    /// Tier weights critical,high,normal,low.
    #[arg(long, default_value = "1,2,5,2", value_delimiter = ',')]
    tiers: Vec<u32>,
    /// Prompt size weights small (~40 chars), medium (~2 KB), large (~16 KB).
    #[arg(long, default_value = "6,3,1", value_delimiter = ',')]
    sizes: Vec<u32>,
    /// `max_tokens` of every job (the simulator stops at it: keep it above its chunks).
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// The simulator's scripted time per call in ms, for `overhead_vs_nominal`.
    #[arg(long)]
    sim_ms: Option<f64>,
    /// Gives up waiting for completions this long after the last submission.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Postgres of the stack: per-stage times and statements per job.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Redis of the stack: commands per job.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Samples this process's RSS (e.g. a worker) during the run.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Samples `sluice_jobs_in_flight` from this /metrics URL (a worker's) during the run.
    #[arg(long)]
    watch_metrics: Option<String>,
    /// Scenario name, copied into the summary.
    #[arg(long, default_value = "run")]
    label: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Unix microseconds, the clock every stage is measured on.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What the event subscriber saw.
#[derive(Default)]
struct Seen {
    /// Job → (terminal event received at, succeeded).
    terminal: HashMap<Uuid, (i64, bool)>,
    /// Chunk lag samples, µs.
    chunk_lag_us: Vec<i64>,
    chunks: u64,
}

/// One submitted job as loadgen saw it.
struct Submitted {
    id: Uuid,
    sent_us: i64,
    accepted_us: i64,
}

/// A small deterministic generator (no dependency, same mix for the same seed).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut r = (self.next() % u64::from(total.max(1))) as u32;
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        0
    }
}

const TIERS: [Tier; 4] = [Tier::Critical, Tier::High, Tier::Normal, Tier::Low];

/// The chat body of job `i`: model, stream flag, prompt size and tier from the mix.
fn job_body(a: &Args, i: usize, mix: &mut Mix) -> (Value, Tier) {
    let tier = TIERS[mix.pick(&a.tiers) % 4];
    let stream = mix.unit() < a.stream_share;
    let words = match mix.pick(&a.sizes) {
        0 => 8,
        1 => 400,
        _ => 3200,
    };
    let text: String = (0..words)
        .map(|w| ["sluice ", "gate ", "river ", "water "][(w + i) % 4])
        .collect();
    let body = json!({
        "model": a.models[i % a.models.len()],
        "messages": [
            {"role": "system", "content": "You summarise documents."},
            {"role": "user", "content": format!("job {i}: {text}")}
        ],
        "max_tokens": a.max_tokens,
        "stream": stream,
        "priority": tier.as_str(),
    });
    (body, tier)
}

fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        let x = v[rank.clamp(1, v.len()) - 1];
        (x * 1000.0).round() / 1000.0
    };
    json!({"n": v.len(), "p50": at(50.0), "p90": at(90.0), "p99": at(99.0), "max": at(100.0)})
}

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn redis_calls(url: &str) -> Result<(u64, u64, HashMap<String, u64>)> {
    let pool = sluice_core::redis::pool(url, 1)?;
    let mut conn = pool.get().await?;
    let info: String = deadpool_redis::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let (mut all, mut evals) = (0, 0);
    let mut by_name = HashMap::new();
    for l in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        let calls: u64 = l
            .split("calls=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if l.starts_with("cmdstat_info:") {
            continue;
        }
        all += calls;
        if let Some(name) = l.strip_prefix("cmdstat_").and_then(|r| r.split(':').next()) {
            by_name.insert(name.to_string(), calls);
        }
        if l.starts_with("cmdstat_eval") {
            evals += calls;
        }
    }
    Ok((all, evals, by_name))
}

/// (statements excluding BEGIN/COMMIT, transactions) so far, if pg_stat_statements is on.
async fn pg_counters(pool: &sqlx::PgPool) -> Option<(i64, i64)> {
    let statements: Option<i64> = sqlx::query_scalar(
        "SELECT sum(calls)::int8 FROM pg_stat_statements
         WHERE query NOT IN ('BEGIN', 'COMMIT', 'ROLLBACK')
           AND query NOT LIKE '%pg_stat_%'",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    let xacts: i64 = sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    Some((statements.unwrap_or(0), xacts))
}

#[derive(sqlx::FromRow)]
struct StageRow {
    id: Uuid,
    created_us: i64,
    started_us: i64,
    attempt_finished_us: Option<i64>,
    latency_ms: Option<f64>,
    attempts: i32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Arc::new(Args::parse());
    if a.jobs == 0 || a.models.is_empty() || a.tiers.len() != 4 || a.sizes.len() != 3 {
        bail!("need --jobs > 0, at least one model, 4 tier weights and 3 size weights");
    }
    let subjects = Subjects::new(&a.prefix);
    let nats = async_nats::ConnectOptions::new()
        .name("sluice-loadgen")
        .subscription_capacity(1 << 20)
        .connect(a.nats.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", a.nats))?;
    let js = async_nats::jetstream::new(nats.clone());

    // Follow every job through one subscription.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let finished = Arc::new(AtomicU64::new(0));
    let mut events = nats
        .subscribe(format!("{}.events.>", a.prefix))
        .await
        .context("cannot subscribe to events")?;
    nats.flush().await?;
    let follower = {
        let (seen, finished) = (Arc::clone(&seen), Arc::clone(&finished));
        tokio::spawn(async move {
            while let Some(m) = events.next().await {
                let at = now_us();
                let kind = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(sluice_schemas::events::HEADER_EVENT))
                    .map(|v| v.as_str())
                    .unwrap_or_default();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                match kind {
                    "chunk" => {
                        s.chunks += 1;
                        if let Some(sent) = stamp(&m.payload) {
                            s.chunk_lag_us.push(at - sent);
                        }
                    }
                    "done" | "error" => {
                        let id = m
                            .subject
                            .rsplit('.')
                            .next()
                            .and_then(|s| Uuid::parse_str(s).ok());
                        if let Some(id) = id {
                            if s.terminal.insert(id, (at, kind == "done")).is_none() {
                                finished.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
            }
        })
    };

    // RSS sampler.
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = a.watch_pid.map(|pid| {
        let rss_max = Arc::clone(&rss_max);
        tokio::spawn(async move {
            loop {
                if let Some(kb) = rss_kb(pid, "VmRSS:") {
                    rss_max.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });

    let inflight_max = Arc::new(AtomicU64::new(0));
    let metrics_sampler = a.watch_metrics.clone().map(|url| {
        let inflight_max = Arc::clone(&inflight_max);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                if let Ok(r) = http.get(&url).send().await {
                    if let Ok(text) = r.text().await {
                        let n = text
                            .lines()
                            .find(|l| l.starts_with("sluice_jobs_in_flight"))
                            .and_then(|l| l.split_whitespace().last())
                            .and_then(|v| v.parse::<f64>().ok());
                        if let Some(n) = n {
                            inflight_max.fetch_max(n as u64, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let pg = match &a.database_url {
        Some(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .context("cannot connect to Postgres")?,
        ),
        None => None,
    };
    let redis_before = match &a.redis_url {
        Some(u) => redis_calls(u).await.ok(),
        None => None,
    };
    let pg_before = match &pg {
        Some(p) => pg_counters(p).await,
        None => None,
    };

    // Submit.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .build()?;
    let gate = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let submitted = Arc::new(Mutex::new(Vec::<Submitted>::with_capacity(a.jobs)));
    let submit_errors = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let mut mix = Mix(a.seed.max(1));
    let t0 = Instant::now();
    let start_us = now_us();
    let mut tasks = tokio::task::JoinSet::new();
    let mut behind_schedule = 0u64;
    for i in 0..a.jobs {
        if a.rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(i as f64 / a.rate);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            } else if now - due > Duration::from_millis(5) {
                behind_schedule += 1;
            }
        }
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let (body, tier) = job_body(&a, i, &mut mix);
        let (a, http, js, subjects) = (Arc::clone(&a), http.clone(), js.clone(), subjects.clone());
        let (submitted, submit_errors) = (Arc::clone(&submitted), Arc::clone(&submit_errors));
        tasks.spawn(async move {
            let sent_us = now_us();
            let result = match a.via {
                Via::Http => submit_http(&a, &http, &body).await,
                Via::Nats => submit_nats(&js, &subjects, body, tier).await,
                Via::Openai => chat_completion(&a, &http, &body).await,
            };
            let accepted_us = now_us();
            drop(permit);
            match result {
                Ok(id) => submitted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Submitted {
                        id,
                        sent_us,
                        accepted_us,
                    }),
                Err(e) => {
                    let mut errs = submit_errors.lock().unwrap_or_else(|p| p.into_inner());
                    let mut e = e.to_string();
                    e.truncate(120);
                    *errs.entry(e).or_default() += 1;
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let submit_secs = t0.elapsed().as_secs_f64();
    let accepted = submitted.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    if a.via == Via::Openai {
        // Synchronous: a job is finished when its response was read.
        let subs = submitted.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        for j in subs.iter() {
            s.terminal.insert(j.id, (j.accepted_us, true));
        }
        finished.store(subs.len() as u64, Ordering::Relaxed);
    }

    // Wait for the terminal events.
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    while finished.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redis_after = match &a.redis_url {
        Some(u) => redis_calls(u).await.ok(),
        None => None,
    };
    let pg_after = match &pg {
        Some(p) => pg_counters(p).await,
        None => None,
    };
    follower.abort();
    if let Some(s) = sampler {
        s.abort();
    }
    if let Some(s) = metrics_sampler {
        s.abort();
    }

    let subs = std::mem::take(&mut *submitted.lock().unwrap_or_else(|p| p.into_inner()));
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let mut completed = 0u64;
    let mut failed = 0u64;
    let mut last_us = start_us;
    let mut submit_ms = Vec::with_capacity(subs.len());
    let mut e2e_ms = HashMap::with_capacity(subs.len());
    for s in &subs {
        submit_ms.push((s.accepted_us - s.sent_us) as f64 / 1000.0);
        if let Some((at, ok)) = seen.terminal.get(&s.id) {
            if *ok {
                completed += 1;
            } else {
                failed += 1;
            }
            last_us = last_us.max(*at);
            e2e_ms.insert(s.id, (*at, (*at - s.sent_us) as f64 / 1000.0));
        }
    }
    let duration = (last_us - start_us) as f64 / 1e6;

    // Stages from what Sluice recorded.
    let mut stages = serde_json::Map::new();
    stages.insert("submit".into(), percentiles(submit_ms));
    let (mut queue, mut admission, mut provider, mut record, mut overhead, mut nominal) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut retried = 0u64;
    if let Some(pg) = &pg {
        let ids: Vec<Uuid> = subs.iter().map(|s| s.id).collect();
        let rows: Vec<StageRow> = sqlx::query_as(
            "SELECT j.id,
                    (extract(epoch FROM j.created_at) * 1e6)::int8 AS created_us,
                    (extract(epoch FROM a.started_at) * 1e6)::int8 AS started_us,
                    (extract(epoch FROM l.finished_at) * 1e6)::int8 AS attempt_finished_us,
                    l.latency_ms, j.attempts
             FROM jobs j
             JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1
             JOIN job_attempts l ON l.job_id = j.id AND l.attempt = j.attempts
             WHERE j.id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(pg)
        .await
        .context("cannot read job timings")?;
        for r in rows {
            if r.attempts > 1 {
                retried += 1;
            }
            let (Some(fin), Some(lat)) = (r.attempt_finished_us, r.latency_ms) else {
                continue;
            };
            let call_start = fin as f64 - lat * 1000.0;
            queue.push((r.started_us - r.created_us) as f64 / 1000.0);
            admission.push((call_start - r.started_us as f64) / 1000.0);
            provider.push(lat);
            if let Some((done_at, e2e)) = e2e_ms.get(&r.id) {
                record.push((done_at - fin) as f64 / 1000.0);
                overhead.push(e2e - lat);
            }
        }
    }
    if let Some(sim) = a.sim_ms {
        nominal = e2e_ms.values().map(|(_, e)| e - sim).collect();
    }
    stages.insert("queue_wait".into(), percentiles(queue));
    stages.insert("admission".into(), percentiles(admission));
    stages.insert("provider".into(), percentiles(provider));
    stages.insert("publish_record".into(), percentiles(record));
    stages.insert(
        "end_to_end".into(),
        percentiles(e2e_ms.values().map(|(_, e)| *e).collect()),
    );
    stages.insert("overhead".into(), percentiles(overhead));
    stages.insert("overhead_vs_nominal".into(), percentiles(nominal));

    let done = (completed + failed).max(1) as f64;
    type Calls = Option<(u64, u64, HashMap<String, u64>)>;
    let per_job = |b: Calls, a_: Calls| match (b, a_) {
        (Some(b), Some(a_)) => {
            let by_name: serde_json::Map<String, Value> =
                a_.2.iter()
                    .map(|(k, v)| {
                        let before = b.2.get(k).copied().unwrap_or(0);
                        (k.clone(), json!(round2((v - before) as f64 / done)))
                    })
                    .filter(|(_, v)| v.as_f64().unwrap_or(0.0) > 0.0)
                    .collect();
            json!({
                "commands": round2((a_.0 - b.0) as f64 / done),
                "evalsha": round2((a_.1 - b.1) as f64 / done),
                "by_command": by_name,
            })
        }
        _ => Value::Null,
    };
    let pg_per_job = match (pg_before, pg_after) {
        (Some(b), Some(a_)) => json!({
            "statements": round2((a_.0 - b.0) as f64 / done),
            "transactions": round2((a_.1 - b.1) as f64 / done),
        }),
        _ => Value::Null,
    };
    let mut errs: Vec<_> = submit_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    errs.sort();
    let summary = json!({
        "label": a.label,
        "via": format!("{:?}", a.via).to_lowercase(),
        "target_rate": a.rate,
        "submitted": a.jobs,
        "accepted": accepted,
        "completed": completed,
        "failed": failed,
        "unfinished": accepted.saturating_sub(completed + failed),
        "retried": retried,
        "submit_errors": errs.into_iter().map(|(e, n)| json!({"error": e, "count": n})).collect::<Vec<_>>(),
        "submitted_behind_schedule": behind_schedule,
        "submit_secs": round2(submit_secs),
        "duration_secs": round2(duration),
        "jobs_per_sec": round2(completed as f64 / duration.max(1e-9)),
        "stages_ms": stages,
        "chunks_received": seen.chunks,
        "chunk_lag_ms": percentiles(seen.chunk_lag_us.iter().map(|u| *u as f64 / 1000.0).collect()),
        "redis_per_job": per_job(redis_before, redis_after),
        "postgres_per_job": pg_per_job,
        "watched_in_flight_max": a.watch_metrics.as_ref().map(|_| inflight_max.load(Ordering::Relaxed)),
        "watched_rss_max_mb": a.watch_pid.map(|_| round2(rss_max.load(Ordering::Relaxed) as f64 / 1024.0)),
        "watched_rss_hwm_mb": a.watch_pid.and_then(|p| rss_kb(p, "VmHWM:")).map(|kb| round2(kb as f64 / 1024.0)),
    });
    println!("{summary}");
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The simulator's send stamp at the start of a chunk body, if any.
fn stamp(payload: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"{\"sim_sent_us\":";
    let rest = payload.strip_prefix(KEY)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

async fn submit_http(a: &Args, http: &reqwest::Client, body: &Value) -> Result<Uuid> {
    let resp = http
        .post(format!("{}/v1/jobs", a.api.trim_end_matches('/')))
        .bearer_auth(&a.key)
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {}", v["error"]["message"]);
    }
    Ok(Uuid::parse_str(v["id"].as_str().unwrap_or_default())?)
}

/// One synchronous chat completion; the whole body is read (streamed or not).
async fn chat_completion(a: &Args, http: &reqwest::Client, body: &Value) -> Result<Uuid> {
    let mut body = body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("priority");
    }
    let resp = http
        .post(format!(
            "{}/v1/chat/completions",
            a.api.trim_end_matches('/')
        ))
        .bearer_auth(&a.key)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let mut text = text;
        text.truncate(100);
        bail!("HTTP {status}: {text}");
    }
    Ok(Uuid::now_v7())
}

async fn submit_nats(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    mut body: Value,
    tier: Tier,
) -> Result<Uuid> {
    if let Some(o) = body.as_object_mut() {
        o.remove("priority");
    }
    let request: ChatRequest = serde_json::from_value(body)?;
    let id = Uuid::now_v7();
    let envelope = JobEnvelope {
        embeddings: None,
        id,
        request,
        tier,
        owner: None,
        reply_subject: None,
        webhook_url: None,
        metadata: None,
        submitted_at_ms: (now_us() / 1000),
        fallbacks: None,
        disable_fallbacks: false,
        user_agent: None,
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id.to_string().as_str());
    js.publish_with_headers(
        subjects.jobs(tier),
        h,
        serde_json::to_vec(&envelope)?.into(),
    )
    .await?
    .await?;
    Ok(id)
}
