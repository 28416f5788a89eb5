//! The official `openai` Python package, unmodified, against Sluice's
//! `/v1/chat/completions` (scripts/test creates `.venv` with it).

mod common;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use common::KEY;
use serde_json::Value;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{Stack, TestEnv};

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

const SCRIPT: &str = r#"
import json, os, sys
from openai import OpenAI
client = OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["KEY"], max_retries=0)
whole = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hello"}])
pieces = []
usage = None
stream = client.chat.completions.create(
    model="fast", messages=[{"role": "user", "content": "hello"}], stream=True,
    stream_options={"include_usage": True}, extra_headers={"x-sluice-priority": "high"})
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
plain = []
for chunk in client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "again"}], stream=True):
    plain.append(chunk.choices[0].delta.content or "")
try:
    client.chat.completions.create(model="no-such-group", messages=[{"role": "user", "content": "x"}])
    error = None
except Exception as e:
    error = type(e).__name__
print(json.dumps({
    "whole": whole.choices[0].message.content, "whole_usage": whole.usage.completion_tokens,
    "object": whole.object, "streamed": "".join(pieces), "stream_usage": usage,
    "plain": "".join(plain), "error": error,
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_completes_plain_and_streamed_requests() -> Result<()> {
    let python = python()?;
    let s = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 6,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&common::models(&s), "")?, 1).await?;
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
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["whole_usage"], 6);
    assert_eq!(v["whole"].as_str().unwrap().split_whitespace().count(), 6);
    // The simulator's text is a function of the request, so both hello calls agree.
    assert_eq!(v["streamed"], v["whole"], "{v}");
    assert_eq!(v["stream_usage"], 6, "usage chunk when asked for");
    assert_eq!(
        v["plain"].as_str().unwrap().split_whitespace().count(),
        6,
        "no usage-only chunk breaks choices[0]"
    );
    assert_eq!(v["error"], "NotFoundError");
    // Each request became a recorded job, the streamed one at high priority.
    let store = env.store().await?;
    let tiers: Vec<String> =
        sqlx::query_scalar("SELECT tier FROM jobs WHERE status = 'succeeded' ORDER BY created_at")
            .fetch_all(store.pool())
            .await?;
    assert_eq!(tiers, ["normal", "high", "normal"]);
    stack.stop().await;
    Ok(())
}
