//! Benchmark (prints figures, asserts only correctness): a batch of 5,000, 20,000 and
//! 50,000 lines against a zero-latency simulator. The API runs as its own `sluice api`
//! process so its memory can be read from /proc; two workers run in this process.
//!
//! `cargo test --release --test batch_bench -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{models, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, TestEnv};
use tokio_util::sync::CancellationToken;

fn input(n: usize) -> String {
    (1..=n)
        .map(|i| {
            let v = json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "fast", "max_tokens": 8,
                         "messages": [{"role": "user", "content": format!("Summarise document number {i} in one line.")}]}});
            format!("{v}\n")
        })
        .collect()
}

/// (current, peak) resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct Figures {
    lines: usize,
    bytes: usize,
    upload: Duration,
    ingest: Duration,
    complete: Duration,
    rss_before_kib: u64,
    rss_uploaded_kib: u64,
    peak_ingest_kib: u64,
}

async fn run(lines: usize) -> Result<Figures> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 2,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    // Past OpenAI's 50,000-line limit too, to show memory does not follow the file.
    let extra = "  batches:\n    max_lines: 200000\n    publish_rate: 1000000\n    max_queued: 1000000\n    poll_ms: 50\n";
    let path = env.write_config(&models(&sim), extra)?;
    let port = sluice_testkit::servers::free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--config"])
        .arg(&path)
        .arg("api")
        .env("SLUICE_API_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("api pid")?;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "api ready", || async {
        let r = http.get(format!("{api}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    let stop = CancellationToken::new();
    let config = env.config(&models(&sim), extra)?;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (c, t) = (config.clone(), stop.clone());
        workers.push(tokio::spawn(async move { sluice_worker::run(c, t).await }));
    }
    let body = input(lines);
    let bytes = body.len();
    let rss_before_kib = rss_kib(pid).map(|r| r.0).unwrap_or(0);

    let t0 = Instant::now();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.into_bytes()).file_name("in.jsonl"),
        );
    let file: Value = http
        .post(format!("{api}/v1/files"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let upload = t0.elapsed();
    let rss_uploaded_kib = rss_kib(pid).map(|r| r.0).unwrap_or(0);
    let t1 = Instant::now();
    let created: Value = http
        .post(format!("{api}/v1/batches"))
        .bearer_auth(KEY)
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    let mut peak_ingest_kib = 0;
    let mut ingest = None;
    let done = loop {
        if let Some((rss, _)) = rss_kib(pid) {
            if ingest.is_none() {
                peak_ingest_kib = peak_ingest_kib.max(rss);
            }
        }
        let v: Value = http
            .get(format!("{api}/v1/batches/{id}"))
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        if ingest.is_none() && v["progress"]["ingested"].as_u64() == Some(lines as u64) {
            ingest = Some(t1.elapsed());
        }
        if matches!(v["status"].as_str(), Some("completed" | "failed")) {
            break v;
        }
        anyhow::ensure!(
            t1.elapsed() < Duration::from_secs(900),
            "batch too slow: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let complete = t1.elapsed();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], lines);
    assert_eq!(sim.requests(), lines as u64);
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    child.kill().await?;
    Ok(Figures {
        lines,
        bytes,
        upload,
        ingest: ingest.unwrap_or(complete),
        complete,
        rss_before_kib,
        rss_uploaded_kib,
        peak_ingest_kib,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test batch_bench -- --ignored --nocapture"]
async fn batch_ingest_and_complete_figures() -> Result<()> {
    let mut rows = Vec::new();
    for lines in [5_000, 50_000, 150_000] {
        rows.push(run(lines).await?);
    }
    println!("\nbatch benchmark (zero-latency simulator, 2 in-process workers, api as a process)");
    println!(
        "lines    MiB  upload  ingest  complete  lines/s  RSS before  RSS uploaded  RSS ingesting*"
    );
    for f in &rows {
        println!(
            "{:<6} {:>5.1} {:>6.2}s {:>6.2}s {:>8.2}s {:>8.0} {:>7} MiB {:>9} MiB {:>11} MiB",
            f.lines,
            f.bytes as f64 / 1048576.0,
            f.upload.as_secs_f64(),
            f.ingest.as_secs_f64(),
            f.complete.as_secs_f64(),
            f.lines as f64 / f.complete.as_secs_f64(),
            f.rss_before_kib / 1024,
            f.rss_uploaded_kib / 1024,
            f.peak_ingest_kib / 1024,
        );
    }
    println!("RSS: the api process; * highest sampled while the batch was validated and ingested");
    Ok(())
}
