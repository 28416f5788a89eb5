//! Embeddings through the queue: `POST /v1/embeddings` with the official OpenAI Python SDK
//! (floats, base64, dimensions), embeddings jobs on `POST /v1/jobs`, a batch of
//! `/v1/embeddings` lines, and every protocol that has embeddings (OpenAI, Azure, Gemini,
//! Ollama) against the simulator's real paths.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::KEY;
use serde_json::{json, Value};
use sluice_testkit::sim::embeddings::{tokens, vector, DEFAULT_DIMENSIONS};
use sluice_testkit::sim::{self, SimConfig, SimHandle};
use sluice_testkit::{eventually, Stack, TestEnv};

/// Groups on every protocol, priced per input token.
fn models(s: &SimHandle) -> String {
    let (v1, host) = (s.api_base(), s.base());
    format!(
        "model_list:
  - model_name: embed
    litellm_params: {{model: openai/text-embedding-3-small, api_base: '{v1}', api_key: sk-embed-key-0001, input_cost_per_token: 0.00000002, output_cost_per_token: 0}}
  - model_name: azure-embed
    litellm_params: {{model: azure/my-embedding, api_base: '{host}', api_key: az-key, api_version: '2024-10-21'}}
  - model_name: azure-v1-embed
    litellm_params: {{model: azure/my-embedding, api_base: '{host}/openai/v1', api_key: az-key}}
  - model_name: gemini-embed
    litellm_params: {{model: gemini/gemini-embedding-001, api_base: '{host}', api_key: g-key}}
  - model_name: ollama-embed
    litellm_params: {{model: ollama/nomic-embed-text, api_base: '{host}'}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: '{host}', api_key: a-key}}
general_settings:
  master_key: {KEY}
"
    )
}

async fn setup() -> Result<(SimHandle, TestEnv, Stack)> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&s), "")?, 1).await?;
    Ok((s, env, stack))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64().map(|f| f as f32))
                .collect()
        })
        .unwrap_or_default()
}

fn python() -> Result<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !venv.is_file() {
        bail!(
            "{} is missing: run scripts/test (it creates the venv with the openai package)",
            venv.display()
        );
    }
    Ok(venv)
}

/// The SDK asks for base64 when the caller names no format (and decodes it to floats).
const SCRIPT: &str = r#"
import json, os
from openai import OpenAI
client = OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["KEY"], max_retries=0)
default = client.embeddings.create(model="embed", input=["rivers run", "to the sea"])
floats = client.embeddings.create(model="embed", input="rivers run", encoding_format="float", dimensions=8)
try:
    client.embeddings.create(model="embed", input=["ok", ""])
    error = None
except Exception as e:
    error = type(e).__name__
print(json.dumps({
    "object": default.object, "model": default.model,
    "default": [d.embedding for d in default.data], "indexes": [d.index for d in default.data],
    "usage": default.usage.prompt_tokens,
    "floats": floats.data[0].embedding, "error": error,
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_embeds_through_the_queue_in_float_and_base64() -> Result<()> {
    let python = python()?;
    let (s, env, stack) = setup().await?;
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .env("BASE_URL", format!("{}/v1", stack.api_url))
        .env("KEY", KEY)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).context("script output")?;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "embed", "answered under the model group's name");
    assert_eq!(v["indexes"], json!([0, 1]));
    // Base64 (the SDK's default) decodes to exactly the simulator's float32 vectors.
    let default = v["default"].as_array().context("default")?;
    assert_eq!(
        floats(&default[0]),
        vector("rivers run", DEFAULT_DIMENSIONS)
    );
    assert_eq!(
        floats(&default[1]),
        vector("to the sea", DEFAULT_DIMENSIONS)
    );
    assert_eq!(
        floats(&v["floats"]),
        vector("rivers run", 8),
        "dimensions honoured"
    );
    let prompt = tokens("rivers run") + tokens("to the sea");
    assert_eq!(v["usage"], prompt);
    assert_eq!(v["error"], "BadRequestError", "an empty input is refused");
    // The upstream got the deployment's model and always floats.
    let (path, body) = s.last_request().context("a request")?;
    assert_eq!(path, "/v1/embeddings");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["encoding_format"], "float");
    assert_eq!(body["dimensions"], 8);
    // Two jobs, each one priced attempt: input tokens at input_cost_per_token.
    let store = env.store().await?;
    let rows: Vec<(i64, i64, rust_decimal::Decimal)> = sqlx::query_as(
        "SELECT a.prompt_tokens, a.completion_tokens, a.cost FROM job_attempts a
         JOIN jobs j ON j.id = a.job_id WHERE j.status = 'succeeded' ORDER BY j.created_at",
    )
    .fetch_all(store.pool())
    .await?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, prompt as i64);
    assert_eq!(rows[0].1, 0);
    assert_eq!(
        rows[0].2,
        rust_decimal::Decimal::new(2, 8) * rust_decimal::Decimal::from(prompt)
    );
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(refused, 2, "the refused request enqueued nothing");
    stack.stop().await;
    Ok(())
}

async fn embed(http: &reqwest::Client, api: &str, body: Value) -> Result<(u16, Value)> {
    let r = http
        .post(format!("{api}/v1/embeddings"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_with_embeddings_answers_on_its_real_path() -> Result<()> {
    let (s, _env, stack) = setup().await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    let texts: Vec<String> = (0..3).map(|i| format!("chunk number {i}")).collect();
    let cases = [
        (
            "azure-embed",
            "/openai/deployments/my-embedding/embeddings?api-version=2024-10-21",
        ),
        ("azure-v1-embed", "/openai/v1/embeddings"),
        ("ollama-embed", "/api/embed"),
        (
            "gemini-embed",
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        ),
    ];
    for (group, path) in cases {
        let (status, v) = embed(
            &http,
            api,
            json!({"model": group, "input": texts, "dimensions": 12}),
        )
        .await?;
        assert_eq!(status, 200, "{group}: {v}");
        let data = v["data"].as_array().context("data")?;
        assert_eq!(data.len(), 3, "{group}");
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(data[i]["index"], i, "{group}");
            assert_eq!(
                floats(&data[i]["embedding"]),
                vector(t, 12),
                "{group} input {i}"
            );
        }
        let (seen, body) = s.last_request().context("a request")?;
        assert_eq!(seen, path, "{group}");
        match group {
            "ollama-embed" => {
                assert_eq!(body["model"], "nomic-embed-text");
                assert_eq!(body["dimensions"], 12);
                // Ollama reports the tokens it read.
                let want: u64 = texts.iter().map(|t| tokens(t)).sum();
                assert_eq!(v["usage"]["prompt_tokens"], want);
            }
            "gemini-embed" => {
                assert_eq!(body["requests"][0]["model"], "models/gemini-embedding-001");
                assert_eq!(body["requests"][0]["outputDimensionality"], 12);
                // Gemini reports no usage: billed by estimate.
                assert!(v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0, "{v}");
            }
            _ => assert_eq!(body["dimensions"], 12),
        }
    }

    // One Gemini input uses embedContent; more than 100 are split into calls of 100.
    let (status, v) = embed(
        &http,
        api,
        json!({"model": "gemini-embed", "input": "alone"}),
    )
    .await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        floats(&v["data"][0]["embedding"]),
        vector("alone", DEFAULT_DIMENSIONS)
    );
    assert_eq!(
        s.last_request().context("a request")?.0,
        "/v1beta/models/gemini-embedding-001:embedContent"
    );
    let many: Vec<String> = (0..150).map(|i| format!("doc {i}")).collect();
    let before = s.requests();
    let (status, v) = embed(&http, api, json!({"model": "gemini-embed", "input": many})).await?;
    assert_eq!(status, 200);
    assert_eq!(
        s.requests() - before,
        2,
        "150 inputs are two batchEmbedContents calls"
    );
    assert_eq!(
        floats(&v["data"][149]["embedding"]),
        vector("doc 149", DEFAULT_DIMENSIONS)
    );

    // base64 is applied by Sluice, whatever the provider answered.
    let (_, v) = embed(
        &http,
        api,
        json!({"model": "ollama-embed", "input": "b64", "encoding_format": "base64"}),
    )
    .await?;
    let b64 = v["data"][0]["embedding"]
        .as_str()
        .context("a base64 string")?;
    let want: Vec<u8> = vector("b64", DEFAULT_DIMENSIONS)
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    use base64::Engine as _;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64)?, want);

    // Refusals name the field; a protocol without embeddings fails the job bad_request.
    let (status, v) = embed(&http, api, json!({"model": "embed"})).await?;
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (400, json!("input")),
        "{v}"
    );
    let (status, v) = embed(
        &http,
        api,
        json!({"model": "embed", "input": "x", "encoding_format": "int8"}),
    )
    .await?;
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (400, json!("encoding_format")),
        "{v}"
    );
    let (status, v) = embed(&http, api, json!({"model": "claude", "input": "x"})).await?;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no embeddings API"),
        "{v}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_jobs_run_on_v1_jobs_and_in_a_batch() -> Result<()> {
    let (_s, _env, stack) = setup().await?;
    let http = reqwest::Client::new();
    let api = &stack.api_url;
    // A job: answered 202, its result is the list.
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&json!({"model": "embed", "input": ["job text"], "priority": "high"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = v["id"].as_str().context("id")?.to_string();
    let job = common::wait_job(&http, api, &id, KEY).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["object"], "list");
    assert_eq!(
        floats(&job["result"]["data"][0]["embedding"]),
        vector("job text", DEFAULT_DIMENSIONS)
    );
    assert_eq!(job["usage"]["prompt_tokens"], tokens("job text"));
    assert!(job["cost"].as_f64().unwrap_or(0.0) > 0.0, "{job}");

    // A batch of /v1/embeddings lines, one refused.
    let mut input = String::new();
    for i in 0..5 {
        let line = json!({"custom_id": format!("e{i}"), "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "embed", "input": format!("line {i}")}});
        input.push_str(&format!("{line}\n"));
    }
    let bad = json!({"custom_id": "empty", "method": "POST", "url": "/v1/embeddings",
        "body": {"model": "embed", "input": ""}});
    input.push_str(&format!("{bad}\n"));
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(input.into_bytes()).file_name("input.jsonl"),
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
    let created: Value = http
        .post(format!("{api}/v1/batches"))
        .bearer_auth(KEY)
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(created["endpoint"], "/v1/embeddings");
    let batch_id = created["id"].as_str().context("batch id")?.to_string();
    let done = eventually(Duration::from_secs(60), "batch to complete", || async {
        let v: Value = http
            .get(format!("{api}/v1/batches/{batch_id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "completed").then_some(v)
    })
    .await?;
    assert_eq!(
        done["request_counts"],
        json!({"total": 6, "completed": 5, "failed": 1})
    );
    let output = http
        .get(format!(
            "{api}/v1/files/{}/content",
            done["output_file_id"].as_str().context("output file")?
        ))
        .bearer_auth(KEY)
        .send()
        .await?
        .text()
        .await?;
    let lines: Vec<Value> = output
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 5);
    for l in &lines {
        let i: usize = l["custom_id"].as_str().context("custom_id")?[1..].parse()?;
        assert_eq!(l["response"]["status_code"], 200);
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "list");
        assert_eq!(
            floats(&body["data"][0]["embedding"]),
            vector(&format!("line {i}"), DEFAULT_DIMENSIONS)
        );
    }
    stack.stop().await;
    Ok(())
}
