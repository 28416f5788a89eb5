//! Queue depth: a known backlog (jobs published with no worker running) is what
//! `GET /v1/queue`, `sluice queue` and the `sluice_queue_*` gauges report.
//! (Its own test binary: the gauges are per process.)

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{job, models, KEY};
use serde_json::Value;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_matches_a_known_backlog() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 0).await?;
    let http = reqwest::Client::new();
    let submitted = std::time::Instant::now();
    for (priority, n) in [("normal", 7), ("high", 3)] {
        for _ in 0..n {
            let mut body = job("fast", false);
            body["priority"] = priority.into();
            let r = http
                .post(format!("{}/v1/jobs", stack.api_url))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await?;
            assert_eq!(r.status(), 202);
        }
    }
    let get_view = || async {
        let v: Value = http
            .get(format!("{}/v1/queue", stack.api_url))
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(v)
    };
    // Before any worker has created the tier consumers, the stream's subjects count.
    let early = get_view().await?;
    assert_eq!(early["tiers"][2]["tier"], "normal", "{early}");
    assert_eq!(early["tiers"][2]["depth"], 7, "{early}");
    // With the consumers in place (as a worker makes them, but pulling nothing), their
    // info counts.
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    sluice_core::nats::ensure_tier_consumers(&js, &subjects, Duration::from_secs(30), 1000).await?;
    let view = get_view().await?;
    let tier = |name: &str| {
        view["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == name)
            .cloned()
            .unwrap()
    };
    let normal = tier("normal");
    assert_eq!(normal["depth"], 7, "{view}");
    assert_eq!(normal["pending"], 7);
    assert_eq!(normal["ack_pending"], 0);
    assert_eq!(normal["consumer"], format!("{}_normal", env.prefix));
    // The oldest job was published after `submitted`, and some time has passed since.
    let age = normal["oldest_age_seconds"].as_f64().unwrap();
    assert!(
        age > 0.0 && age <= submitted.elapsed().as_secs_f64() + 1.0,
        "oldest age {age}s, submitted {:?} ago",
        submitted.elapsed()
    );
    assert_eq!(tier("high")["depth"], 3);
    assert_eq!(tier("critical")["depth"], 0);
    assert!(tier("low")["oldest_age_seconds"].is_null());
    assert_eq!(view["workers"].as_array().unwrap().len(), 0);

    // The same numbers as gauges.
    let text = http
        .get(format!("{}/metrics", stack.api_url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains("sluice_queue_depth{tier=\"normal\"} 7"),
        "{text}"
    );
    assert!(text.contains("sluice_queue_pending{tier=\"high\"} 3"));
    assert!(text.contains("sluice_queue_depth{tier=\"low\"} 0"));

    // And as a table.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["queue", "--api-url", &stack.api_url, "--key", KEY])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let normal_row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("normal"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&normal_row[..4], &["normal", "7", "7", "0"], "{stdout}");
    assert!(stdout.contains("no workers seen"));
    stack.stop().await;
    Ok(())
}
