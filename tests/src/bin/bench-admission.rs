//! `bench-admission`: flow-control figures against a local Redis started by the testkit.
//!
//! Prints admissions per second (admit alone, and admit + settle), Redis round trips per
//! job, and rpm accuracy with three independent limiters (as three workers): the busiest
//! sliding window against the limit, and utilisation over the run.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sluice_testkit::{services, unique};
use sluice_worker::limits::{Actual, Admission, Candidate, Estimate, Health, Kind, Limiter, Scope};

const MINUTE: Duration = Duration::from_secs(60);

fn roomy(subject: &str) -> Vec<Candidate> {
    vec![Candidate {
        deployment: subject.to_string(),
        order: 0,
        cooldowns: true,
        scopes: vec![
            Scope::new(Kind::Rpm, subject, 1e12, MINUTE),
            Scope::new(Kind::Tpm, subject, 1e15, MINUTE),
            Scope::new(Kind::Parallel, subject, 1e9, MINUTE),
        ],
        estimate: Estimate {
            tokens: 500,
            cost: 0.0,
        },
    }]
}

async fn commands(url: &str) -> Result<u64> {
    let pool = sluice_core::redis::pool(url, 1)?;
    let mut conn = pool.get().await?;
    let info: String = deadpool_redis::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        // Commands the clients sent: EVALSHA (and EVAL/SCRIPT on a cold cache), and the
        // PING/UNWATCH a pool checkout costs. Commands run inside the scripts are not
        // round trips and are left out.
        .filter(|l| {
            [
                "cmdstat_eval",
                "cmdstat_script",
                "cmdstat_ping",
                "cmdstat_unwatch",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

async fn throughput(url: &str, settle: bool, tasks: usize, for_: Duration) -> Result<(f64, u64)> {
    let limiter = Limiter::new(sluice_core::redis::pool(url, tasks)?, &unique("b"), false);
    let subject = unique("dep:");
    let done = Arc::new(AtomicU64::new(0));
    let before = commands(url).await?;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (l, c, done) = (limiter.clone(), roomy(&subject), done.clone());
        handles.push(tokio::spawn(async move {
            while start.elapsed() < for_ {
                if let Admission::Admitted { reservation, .. } =
                    l.admit(None, &c, Duration::from_secs(30)).await
                {
                    if settle {
                        l.settle(
                            reservation,
                            Actual {
                                tokens: 120,
                                cost: 0.0,
                            },
                            Health::success(),
                        )
                        .await;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let n = done.load(Ordering::Relaxed);
    let calls = commands(url).await? - before;
    Ok((n as f64 / start.elapsed().as_secs_f64(), calls / n.max(1)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = services().redis_url.clone();
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    let (admit_rate, admit_rt) = throughput(&url, false, 64, Duration::from_secs(secs)).await?;
    let (job_rate, job_rt) = throughput(&url, true, 64, Duration::from_secs(secs)).await?;

    // Accuracy: 3 limiters, limit 100 per 10 s window, 30 s of demand well above the limit.
    let period = Duration::from_secs(10);
    let limit = 100.0;
    let prefix = unique("acc");
    let starts = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let run = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let l = Limiter::new(sluice_core::redis::pool(&url, 16)?, &prefix, false);
        for _ in 0..16 {
            let (l, starts) = (l.clone(), starts.clone());
            let c = vec![Candidate {
                deployment: "acc".into(),
                order: 0,
                cooldowns: true,
                scopes: vec![Scope::new(Kind::Rpm, "dep:acc", limit, period)],
                estimate: Estimate {
                    tokens: 1,
                    cost: 0.0,
                },
            }];
            handles.push(tokio::spawn(async move {
                while t0.elapsed() < run {
                    match l.admit(None, &c, Duration::from_secs(30)).await {
                        Admission::Admitted { reservation, .. } => {
                            if let Some(ms) = reservation.admitted_at_ms {
                                starts.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                            }
                        }
                        Admission::Wait { after, .. } => {
                            tokio::time::sleep(after.min(run.saturating_sub(t0.elapsed()))).await
                        }
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await?;
    }
    let mut s = starts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    s.sort_unstable();
    let w = period.as_millis() as i64;
    let (mut peak, mut j) = (0usize, 0usize);
    for i in 0..s.len() {
        while j < s.len() && s[j] < s[i] + w {
            j += 1;
        }
        peak = peak.max(j - i);
    }
    let windows = run.as_secs_f64() / period.as_secs_f64();
    let utilisation = s.len() as f64 / (limit * windows) * 100.0;

    println!("admission (64 concurrent tasks, one Redis, {secs} s each):");
    println!(
        "  admit only          {admit_rate:>10.0} admissions/s   {admit_rt} Redis command(s) each"
    );
    println!(
        "  admit + settle      {job_rate:>10.0} jobs/s         {job_rt} Redis commands per job"
    );
    println!("rpm accuracy (3 limiters x 16 tasks, limit {limit} per {period:?}, {run:?}):");
    println!(
        "  admitted {}   busiest sliding window {peak} (limit {limit})   overshoot {}",
        s.len(),
        peak.saturating_sub(limit as usize)
    );
    println!("  utilisation {utilisation:.1}% of the limit over the run");
    Ok(())
}
