//! `/metrics` on the api and the worker: the metrics appear, move when jobs run, and hold
//! no secrets; the worker's `/healthz` and `/readyz`; workers show up in `/v1/queue`.
//! (Its own test binary: the recorder is per process.)

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use common::{job, wait_job, KEY};
use serde_json::Value;
use sluice_testkit::servers::free_port;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack, TestEnv};

/// A priced group named for this test, so its series are its own.
fn models(sim: &sim::SimHandle) -> String {
    format!(
        "model_list:
  - model_name: metered
    litellm_params:
      model: openai/sim-model
      api_base: {}
      api_key: sk-test-secret-key-123456
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      id: metered-1
general_settings:
  master_key: {KEY}
",
        sim.api_base()
    )
}

/// Parses Prometheus text into `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` whose labels include all of `labels`.
fn sum(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

async fn scrape(http: &reqwest::Client, url: &str) -> Result<(String, HashMap<String, f64>)> {
    let resp = http.get(format!("{url}/metrics")).send().await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/plain"));
    let text = resp.text().await?;
    let parsed = parse(&text);
    Ok((text, parsed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_appear_and_move_when_jobs_run() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 4,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let port = free_port();
    let worker_url = format!("http://127.0.0.1:{port}");
    let extra = format!("  metrics_addr: 127.0.0.1:{port}");
    let stack = Stack::start(env.config(&models(&sim), &extra)?, 1).await?;
    let http = reqwest::Client::new();

    // The worker's own endpoints come up.
    eventually(Duration::from_secs(30), "worker ready", || async {
        let r = http.get(format!("{worker_url}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await?;
    let health = http.get(format!("{worker_url}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    let ready: Value = http
        .get(format!("{worker_url}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ready["postgres"], "ok");
    assert_eq!(ready["redis"], "ok");
    assert_eq!(ready["nats"], "ok");
    assert_eq!(ready["draining"], false);

    let (_, before) = scrape(&http, &stack.api_url).await?;
    let n = 3;
    let mut ids = Vec::new();
    for i in 0..n {
        let r: Value = http
            .post(format!("{}/v1/jobs", stack.api_url))
            .bearer_auth(KEY)
            .json(&job("metered", i % 2 == 0))
            .send()
            .await?
            .json()
            .await?;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let v = wait_job(&http, &stack.api_url, id, KEY).await?;
        assert_eq!(v["status"], "succeeded");
    }
    // Completion metrics are recorded with the ledger write, which the result follows.
    let (text, after) = eventually(Duration::from_secs(10), "completions counted", || {
        let http = http.clone();
        let url = worker_url.clone();
        async move {
            let (text, m) = scrape(&http, &url).await.ok()?;
            let done = sum(
                &m,
                "sluice_jobs_completed_total",
                &["status=\"succeeded\"", "model_group=\"metered\""],
            );
            (done >= n as f64).then_some((text, m))
        }
    })
    .await?;
    let delta =
        |name: &str, labels: &[&str]| sum(&after, name, labels) - sum(&before, name, labels);
    let group = "model_group=\"metered\"";
    assert_eq!(delta("sluice_jobs_submitted_total", &[group]), n as f64);
    assert_eq!(
        delta("sluice_jobs_submitted_total", &[group, "key=\"master\""]),
        n as f64
    );
    assert_eq!(
        delta(
            "sluice_jobs_completed_total",
            &[group, "status=\"succeeded\"", "tier=\"normal\""]
        ),
        n as f64
    );
    assert_eq!(
        delta("sluice_job_end_to_end_seconds_count", &[group]),
        n as f64
    );
    assert_eq!(delta("sluice_job_run_seconds_count", &[group]), n as f64);
    let dep = "deployment=\"metered-1\"";
    assert_eq!(
        delta(
            "sluice_provider_request_duration_seconds_count",
            &[dep, "provider=\"openai\"", "outcome=\"succeeded\""]
        ),
        n as f64
    );
    // Two of the three were streamed.
    assert_eq!(delta("sluice_provider_ttft_seconds_count", &[dep]), 2.0);
    assert_eq!(
        delta("sluice_tokens_total", &[dep, "kind=\"completion\""]),
        (4 * n) as f64
    );
    assert!(delta("sluice_tokens_total", &[dep, "kind=\"prompt\""]) > 0.0);
    // Cost is a counter (fractional USD), by model group, deployment and key.
    assert!(text.contains("# TYPE sluice_cost_usd_total counter"));
    let cost = delta("sluice_cost_usd_total", &[group, dep, "key=\"master\""]);
    assert!(cost > 0.0, "cost {cost}");
    // Each job: prompt tokens at 1e-6 and 4 completion tokens at 2e-6 USD.
    let prompt = delta("sluice_tokens_total", &[dep, "kind=\"prompt\""]);
    let want = prompt * 1e-6 + (4 * n) as f64 * 2e-6;
    assert!((cost - want).abs() < 1e-9, "cost {cost} vs {want}");
    assert_eq!(
        delta(
            "sluice_tokens_total",
            &[dep, "kind=\"completion\"", "model=\"sim-model\""]
        ),
        (4 * n) as f64
    );
    // Process and build metrics, on both services.
    for m in [&after, &scrape(&http, &stack.api_url).await?.1] {
        assert!(m["process_resident_memory_bytes"] > 0.0);
        assert!(m["process_open_fds"] > 0.0);
        assert!(m.contains_key("process_cpu_seconds_total"));
        assert_eq!(sum(m, "sluice_build_info", &["version="]), 1.0);
    }
    assert!(
        sum(
            &after,
            "sluice_job_queue_wait_seconds_count",
            &["tier=\"normal\""]
        ) >= n as f64
    );
    assert!(after.contains_key("sluice_jobs_in_flight"));
    // Every job finished, so the tier's queue empties: the depth gauge (sampled at each
    // scrape) reads 0 once the last ack has landed.
    let depth_key = "sluice_queue_depth{tier=\"normal\"}";
    eventually(Duration::from_secs(10), "the normal tier drained", || {
        let http = http.clone();
        let url = worker_url.clone();
        async move {
            let (_, m) = scrape(&http, &url).await.ok()?;
            (m.get(depth_key) == Some(&0.0)).then_some(())
        }
    })
    .await?;
    for tier in ["critical", "high", "normal", "low"] {
        assert!(
            text.contains(&format!("sluice_queue_depth{{tier=\"{tier}\"}}")),
            "queue depth of {tier} missing"
        );
    }
    assert!(text.contains("# HELP sluice_jobs_completed_total"));
    assert!(
        text.contains("sluice_job_run_seconds_bucket"),
        "histograms, not summaries"
    );
    // API requests by route pattern and status.
    let (_, api) = scrape(&http, &stack.api_url).await?;
    assert_eq!(
        sum(
            &api,
            "sluice_http_request_duration_seconds_count",
            &["route=\"/v1/jobs\"", "method=\"POST\"", "status=\"202\""]
        ),
        n as f64
    );
    assert!(
        sum(
            &api,
            "sluice_http_request_duration_seconds_count",
            &["route=\"/v1/jobs/{id}\"", "status=\"200\""]
        ) >= n as f64
    );
    // No secrets, whichever endpoint.
    for body in [text, scrape(&http, &stack.api_url).await?.0] {
        assert!(!body.contains("sk-test-secret-key"), "provider key leaked");
        assert!(!body.contains(KEY), "master key leaked");
    }

    // The worker is listed in the queue view through its heartbeat.
    let view: Value = http
        .get(format!("{}/v1/queue", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    let workers = view["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{view}");
    assert_eq!(workers[0]["capacity"], 256);
    assert_eq!(workers[0]["draining"], false);
    stack.stop().await;
    Ok(())
}
