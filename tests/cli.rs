//! The `sluice` command line against a running stack.

mod common;

use anyhow::Result;
use common::{models, KEY};
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{Stack, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_prints_tokens_then_usage_and_cost() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 5,
            chunk_interval_ms: 5,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "submit",
            "--model",
            "fast",
            "--message",
            "Tell me about gates",
            "--stream",
        ])
        .args(["--api-url", &stack.api_url, "--key", KEY])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words.len(), 5, "five streamed words: {stdout:?}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    assert!(stderr.contains("5 completion tokens"), "{stderr}");
    assert!(stderr.contains("cost $0.0000"), "{stderr}");

    // An unknown group fails with the API's message and a non-zero exit.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["submit", "--model", "nope", "--message", "hi"])
        .args(["--api-url", &stack.api_url, "--key", KEY])
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    stack.stop().await;
    Ok(())
}
