//! Virtual keys: created by the master key only, stored only as hashes, and each key sees,
//! follows and cancels only its own jobs.

mod common;

use anyhow::Result;
use common::{job, models, KEY};
use serde_json::{json, Value};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{Stack, TestEnv};

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn create_key(&self, body: Value) -> Result<(String, String)> {
        let (status, v) = self
            .call(reqwest::Method::POST, "/v1/keys", KEY, Some(body))
            .await?;
        assert_eq!(status, 201, "{v}");
        Ok((
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_read_stream_or_cancel_another_keys_job() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // No worker: jobs stay queued, which is all isolation needs.
    let stack = Stack::start(env.config(&models(&sim), "")?, 0).await?;
    let api = Api {
        http: reqwest::Client::new(),
        url: stack.api_url.clone(),
    };
    let (a_id, a_key) = api.create_key(json!({"name": "team-a"})).await?;
    let (b_id, b_key) = api.create_key(json!({"name": "team-b"})).await?;
    assert_ne!(a_id, b_id);

    let (status, submitted) = api
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            &b_key,
            Some(job("fast", false)),
        )
        .await?;
    assert_eq!(status, 202, "{submitted}");
    let job_id = submitted["id"].as_str().unwrap().to_string();

    let get = format!("/v1/jobs/{job_id}");
    let events = format!("/v1/jobs/{job_id}/events");
    let cancel = format!("/v1/jobs/{job_id}/cancel");
    use reqwest::Method as M;
    assert_eq!(api.call(M::GET, &get, &a_key, None).await?.0, 404);
    assert_eq!(api.call(M::GET, &events, &a_key, None).await?.0, 404);
    assert_eq!(api.call(M::POST, &cancel, &a_key, None).await?.0, 404);
    // Still queued: A's cancel did nothing.
    let (status, view) = api.call(M::GET, &get, &b_key, None).await?;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "queued");
    // The master sees every job; the owner is the key id, not the key.
    let store = env.store().await?;
    let owner: String = sqlx::query_scalar("SELECT owner FROM jobs WHERE id = $1::uuid")
        .bind(&job_id)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(owner, b_id);
    assert_eq!(api.call(M::GET, &get, KEY, None).await?.0, 200);
    // B cancels its own job.
    let (status, view) = api.call(M::POST, &cancel, &b_key, None).await?;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "cancelled");
    assert_eq!(api.call(M::POST, &cancel, &b_key, None).await?.0, 409);

    // Keys are master-only business.
    assert_eq!(
        api.call(M::POST, "/v1/keys", &a_key, Some(json!({})))
            .await?
            .0,
        403
    );
    assert_eq!(api.call(M::GET, "/v1/keys", &a_key, None).await?.0, 403);
    assert_eq!(api.call(M::GET, "/v1/queue", &a_key, None).await?.0, 403);

    // A revoked key stops working at once.
    let (status, _) = api
        .call(M::DELETE, &format!("/v1/keys/{b_id}"), KEY, None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(api.call(M::GET, &get, &b_key, None).await?.0, 401);
    assert_eq!(
        api.call(M::DELETE, &format!("/v1/keys/{b_id}"), KEY, None)
            .await?
            .0,
        404
    );
    let (_, list) = api.call(M::GET, "/v1/keys", KEY, None).await?;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids, vec![a_id.as_str()]);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_only_as_hashes_with_their_limits() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 0).await?;
    let api = Api {
        http: reqwest::Client::new(),
        url: stack.api_url.clone(),
    };
    let settings = json!({
        "name": "pipeline",
        "models": ["fast"],
        "rpm_limit": 60,
        "tpm_limit": 100000,
        "max_parallel_requests": 4,
        "max_budget": 12.5,
        "budget_duration": "30d",
        "metadata": {"team": "search"}
    });
    let (status, created) = api
        .call(reqwest::Method::POST, "/v1/keys", KEY, Some(settings))
        .await?;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["rpm_limit"], 60);
    assert_eq!(created["max_budget"], 12.5);
    assert_eq!(created["models"], json!(["fast"]));

    // No column of the table holds the key; the hash is its SHA-256.
    let store = env.store().await?;
    let row: Value = sqlx::query_scalar("SELECT to_jsonb(k) FROM api_keys k WHERE id = $1")
        .bind(&id)
        .fetch_one(store.pool())
        .await?;
    let text = row.to_string();
    assert!(!text.contains(&key), "the key is stored in clear: {text}");
    assert!(
        !text.contains(&key[10..30]),
        "part of the key is stored: {text}"
    );
    assert_eq!(
        row["key_hash"].as_str(),
        Some(sluice_core::keys::hash_key(&key).as_str())
    );
    assert_eq!(row["tpm_limit"], 100000);
    assert_eq!(row["budget_duration"], "30d");
    assert_eq!(row["metadata"]["team"], "search");
    // Listing never shows it either.
    let (_, list) = api
        .call(reqwest::Method::GET, "/v1/keys", KEY, None)
        .await?;
    assert!(!list.to_string().contains(&key));
    assert_eq!(
        list["data"][0]["hint"],
        format!("sk-…{}", &key[key.len() - 4..])
    );
    // The record the admission stage reads.
    let record = store.api_key(&id).await?.unwrap();
    assert_eq!(record.max_parallel_requests, Some(4));

    // The key works, within its models.
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            &key,
            Some(job("fast", false)),
        )
        .await?;
    assert_eq!(status, 202);
    let (_, models) = api
        .call(reqwest::Method::GET, "/v1/models", &key, None)
        .await?;
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    // Invalid settings name the field.
    let (status, err) = api
        .call(
            reqwest::Method::POST,
            "/v1/keys",
            KEY,
            Some(json!({"models": ["nope"]})),
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "models");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_some_models_is_refused_others() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let two_groups = models(&sim).replace(
        "general_settings:",
        &format!(
            "  - model_name: premium\n    litellm_params:\n      model: openai/sim-model\n      api_base: {}\n    model_info:\n      id: sim-premium\ngeneral_settings:",
            sim.api_base()
        ),
    );
    let stack = Stack::start(env.config(&two_groups, "")?, 0).await?;
    let api = Api {
        http: reqwest::Client::new(),
        url: stack.api_url.clone(),
    };
    let (_, key) = api.create_key(json!({"models": ["fast"]})).await?;
    let (status, err) = api
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            &key,
            Some(job("premium", false)),
        )
        .await?;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["error"]["code"], "model_not_allowed");
    assert!(!err.to_string().contains(&key));
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            &key,
            Some(job("fast", false)),
        )
        .await?;
    assert_eq!(status, 202);
    // A made-up key in the virtual-key format is refused without echoing it.
    let fake = "sk-sluice-0000000000000000000000000000000000000000000000000000000000000000";
    let (status, err) = api
        .call(reqwest::Method::GET, "/v1/models", fake, None)
        .await?;
    assert_eq!(status, 401);
    assert!(!err.to_string().contains(fake));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_keys_creates_lists_and_deletes() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 0).await?;
    let sluice = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("keys")
            .args(args)
            .args(["--api-url", &stack.api_url, "--key", KEY])
            .env("RUST_LOG", "warn");
        cmd
    };
    let out = sluice(&[
        "create",
        "--name",
        "cli",
        "--models",
        "fast",
        "--rpm-limit",
        "10",
        "--max-budget",
        "5",
        "--budget-duration",
        "1d",
    ])
    .output()
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout)?;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["key"]
        .as_str()
        .unwrap()
        .starts_with(sluice_core::keys::KEY_PREFIX));
    assert_eq!(created["rpm_limit"], 10);

    let out = sluice(&["list"]).output().await?;
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert!(listed["data"][0].get("key").is_none());

    let out = sluice(&["delete", &id]).output().await?;
    assert!(out.status.success());
    let out = sluice(&["delete", &id]).output().await?;
    assert!(!out.status.success(), "deleting twice fails");
    stack.stop().await;
    Ok(())
}
