//! `GET /v1/jobs` (filters, cursor pagination, a virtual key's view) and `sluice jobs` on
//! it, against a real stack with no worker, so every job stays queued where it was put.

mod common;

use std::collections::HashSet;

use anyhow::{Context, Result};
use common::KEY;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{Stack, TestEnv};

async fn submit(http: &reqwest::Client, api: &str, key: &str, priority: &str) -> Result<String> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(key)
        .json(&json!({"model": "fast", "priority": priority,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["id"].as_str().map(str::to_string).context("job id")
}

async fn list(http: &reqwest::Client, api: &str, key: &str, query: &str) -> Result<Value> {
    Ok(http
        .get(format!("{api}/v1/jobs?{query}"))
        .bearer_auth(key)
        .send()
        .await?
        .json()
        .await?)
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_newest_first_filtered_and_paged_and_a_virtual_key_sees_only_its_own(
) -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&common::models(&s), "")?, 0).await?;
    let api = stack.api_url.clone();
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{api}/v1/keys"))
        .bearer_auth(KEY)
        .json(&json!({"name": "team-a"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (vkey, vid) = (
        created["key"].as_str().context("key")?.to_string(),
        created["id"].as_str().context("id")?.to_string(),
    );
    let mut mine = Vec::new();
    for p in ["high", "high", "high", "low", "low"] {
        mine.push(submit(&http, &api, KEY, p).await?);
    }
    let mut theirs = Vec::new();
    for _ in 0..2 {
        theirs.push(submit(&http, &api, &vkey, "normal").await?);
    }
    let mut all: Vec<String> = mine.iter().chain(&theirs).cloned().collect();
    all.reverse(); // newest first

    // Pages of two, following last_id, give every job once, newest first.
    let mut seen = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let page = list(&http, &api, KEY, &query).await?;
        assert_eq!(page["object"], "list");
        seen.extend(ids(&page));
        if !page["has_more"].as_bool().context("has_more")? {
            break;
        }
        query = format!(
            "limit=2&after={}",
            page["last_id"].as_str().context("last_id")?
        );
    }
    assert_eq!(seen, all);

    let high = list(&http, &api, KEY, "priority=high").await?;
    assert_eq!(
        ids(&high).into_iter().collect::<HashSet<_>>(),
        mine[..3].iter().cloned().collect()
    );
    assert!(high["data"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|j| j["status"] == "queued" && j["key"] == "master" && j["model"] == "fast"));
    let by_key = list(
        &http,
        &api,
        KEY,
        &format!("key={vid}&status=queued&model=fast"),
    )
    .await?;
    assert_eq!(ids(&by_key).len(), 2);
    assert!(ids(&list(&http, &api, KEY, "status=succeeded").await?).is_empty());

    // A virtual key: its own jobs whatever it asks for.
    let own = list(&http, &api, &vkey, "").await?;
    assert_eq!(ids(&own), theirs.iter().rev().cloned().collect::<Vec<_>>());
    assert!(ids(&list(&http, &api, &vkey, "key=master").await?).is_empty());

    // Bad filters name the parameter.
    for (query, param) in [
        ("status=done", "status"),
        ("priority=urgent", "priority"),
        ("after=nope", "after"),
        ("limit=1000", "limit"),
        ("order=asc", "order"),
    ] {
        let resp = http
            .get(format!("{api}/v1/jobs?{query}"))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }

    // `sluice jobs` on the same endpoint.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "jobs",
            "--priority",
            "high",
            "--api-url",
            &api,
            "--key",
            KEY,
        ])
        .env_remove("SLUICE_MASTER_KEY")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("id"), "{text}");
    assert_eq!(lines.len(), 4, "header and three jobs: {text}");
    for id in &mine[..3] {
        assert!(text.contains(id.as_str()), "{id} in {text}");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["jobs", "--limit", "3", "--all", "--json"])
        .args(["--api-url", &api, "--key", &vkey])
        .env_remove("SLUICE_MASTER_KEY")
        .output()
        .await?;
    assert!(out.status.success());
    let pages: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()?;
    let listed: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(listed, theirs.iter().rev().cloned().collect::<Vec<_>>());
    stack.stop().await;
    Ok(())
}
