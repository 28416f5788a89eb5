//! `bench-ceilings`: what Sluice's parts allow on this machine, measured the way Sluice
//! uses them, so each end-to-end figure can be read as a fraction of its ceiling.
//!
//! - JetStream publish + ack: 700-byte messages with `Nats-Msg-Id` to a file-backed
//!   work-queue stream, up to 256 acks outstanding (as many API requests at once).
//! - JetStream pull + ack: a durable pull consumer, fetches of 64, each message acked.
//! - Redis EVALSHA: a one-key Lua script (INCR), 64 tasks over a 32-connection pool (the
//!   worker's pool size).
//! - Postgres batched insert: `job_attempts`-shaped rows via `UNNEST` of typed arrays, 512 per
//!   transaction, one connection (as the ledger's group commit writes).
//!
//! Prints one JSON object. Uses its own stream, consumer, Redis key and table, and
//! removes them afterwards.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use clap::Parser;
use futures::StreamExt;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Raw ceilings of JetStream, Redis and Postgres on this machine")]
struct Args {
    #[arg(long, env = "NATS_URL")]
    nats: String,
    #[arg(long, env = "REDIS_URL")]
    redis: String,
    #[arg(long, env = "DATABASE_URL")]
    database: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let secs = Duration::from_secs_f64(a.secs);
    let (publish, pull) = jetstream_rates(&a.nats, secs).await?;
    let redis = redis_rate(&a.redis, secs).await?;
    let pg = postgres_rate(&a.database, secs).await?;
    println!(
        "{}",
        json!({
            "secs_each": a.secs,
            "jetstream_publish_ack_per_sec": publish.round(),
            "jetstream_pull_ack_per_sec": pull.round(),
            "redis_evalsha_per_sec": redis.round(),
            "postgres_batched_rows_per_sec": pg.round(),
        })
    );
    Ok(())
}

async fn jetstream_rates(url: &str, secs: Duration) -> Result<(f64, f64)> {
    let client = async_nats::connect(url).await.context("NATS")?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH_CEILING").await;
    let s = js
        .create_stream(stream::Config {
            name: "BENCH_CEILING".into(),
            subjects: vec!["bench.ceiling.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 700]);
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut published = 0u64;
    while start.elapsed() < secs {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        pending.push_back(
            js.publish_with_headers("bench.ceiling.normal", h, payload.clone())
                .await?,
        );
        if pending.len() >= 256 {
            if let Some(ack) = pending.pop_front() {
                ack.await?;
                published += 1;
            }
        }
    }
    for ack in pending {
        ack.await?;
        published += 1;
    }
    let publish_rate = published as f64 / start.elapsed().as_secs_f64();

    let c = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut pulled = 0u64;
    while pulled < published && start.elapsed() < secs * 3 {
        let mut batch = c.fetch().max_messages(64).messages().await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            pulled += 1;
        }
    }
    let pull_rate = pulled as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream("BENCH_CEILING").await;
    Ok((publish_rate, pull_rate))
}

async fn redis_rate(url: &str, secs: Duration) -> Result<f64> {
    use deadpool_redis::redis::Script;
    let pool = sluice_core::redis::pool(url, 32)?;
    let script = Arc::new(Script::new("return redis.call('INCR', KEYS[1])"));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (pool, script, done) = (pool.clone(), Arc::clone(&script), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < secs {
                let Ok(mut conn) = pool.get().await else {
                    continue;
                };
                // EVALSHA (falls back to EVAL once to load the script).
                let r: Result<i64, _> = script.key("{bench}:ceiling").invoke_async(&mut conn).await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    if let Ok(mut conn) = pool.get().await {
        let _: Result<(), _> = deadpool_redis::redis::cmd("DEL")
            .arg("{bench}:ceiling")
            .query_async(&mut conn)
            .await;
    }
    Ok(rate)
}

async fn postgres_rate(url: &str, secs: Duration) -> Result<f64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("Postgres")?;
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE bench_ceiling (LIKE job_attempts INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let start = Instant::now();
    let mut rows = 0u64;
    while start.elapsed() < secs {
        // One array per column, as the ledger passes its rows (core/src/store/arrays.rs).
        const N: usize = 512;
        let started: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse()?;
        let finished = started + chrono::Duration::seconds(1);
        let ids: Vec<uuid::Uuid> = (0..N).map(|_| uuid::Uuid::now_v7()).collect();
        let prompt: Vec<i64> = (0..N as i64).map(|i| 120 + i).collect();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bench_ceiling (job_id, attempt, delivery, worker, deployment, provider, model, status,
                  prompt_tokens, completion_tokens, cost, latency_ms, ttft_ms, started_at, finished_at)
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[],
                  $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[]::numeric[],
                  $12::float8[], $13::float8[], $14::timestamptz[], $15::timestamptz[])
             ON CONFLICT (job_id, attempt) DO NOTHING",
        )
        .bind(&ids)
        .bind(vec![1i32; N])
        .bind(vec![1i32; N])
        .bind(vec!["bench"; N])
        .bind(vec!["bench-dep"; N])
        .bind(vec!["openai"; N])
        .bind(vec!["gpt-4o-mini"; N])
        .bind(vec!["succeeded"; N])
        .bind(&prompt)
        .bind(vec![64i64; N])
        .bind(vec!["0.000056"; N])
        .bind(vec![12.5f64; N])
        .bind(vec![3.25f64; N])
        .bind(vec![started; N])
        .bind(vec![finished; N])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        rows += 512;
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_ceiling")
        .execute(&pool)
        .await?;
    Ok(rate)
}
