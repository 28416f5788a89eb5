//! `provider-sim`: the provider simulator as a standalone server (quickstart, load tests).
#![forbid(unsafe_code)]

/// mimalloc, as in the sluice binary (`src/main.rs`): this tool shares the cores with
/// what it measures, so its own cost per chunk is kept low.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use sluice_testkit::sim::{self, Fault, SimConfig};

#[derive(Parser)]
#[command(
    about = "Simulated LLM provider (OpenAI, Azure, Anthropic, Gemini and Ollama wire formats) for demos and load tests"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: String,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    #[arg(long, default_value_t = 8)]
    chunks: u32,
    #[arg(long, default_value_t = 0)]
    chunk_interval_ms: u64,
    /// Leave usage out of responses.
    #[arg(long)]
    no_usage: bool,
    /// Require this key in each protocol's auth header.
    #[arg(long)]
    api_key: Option<String>,
    /// Fail the first `--fail-first` requests (all, if 0) with this fault
    /// (rate_limit, server, overloaded, overloaded_529, truncate, hang, context_window,
    /// content_policy, malformed, error_mid_stream, no_usage, auth, not_found).
    #[arg(long)]
    fault: Option<String>,
    #[arg(long, default_value_t = 0)]
    fail_first: u64,
    /// Stamp each streamed event with `"sim_sent_us"` (for chunk-lag measurements).
    #[arg(long)]
    stamp_chunks: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let fault = match &a.fault {
        None => None,
        Some(name) => Some(
            serde_json::from_value::<Fault>(serde_json::Value::String(name.clone()))
                .map_err(|_| anyhow::anyhow!("unknown fault {name:?}"))?,
        ),
    };
    let config = SimConfig {
        latency_ms: a.latency_ms,
        ttft_ms: a.ttft_ms,
        chunks: a.chunks,
        chunk_interval_ms: a.chunk_interval_ms,
        usage: !a.no_usage,
        api_key: a.api_key,
        fault,
        fail_first: if a.fail_first == 0 {
            u64::MAX
        } else {
            a.fail_first
        },
        stamp_chunks: a.stamp_chunks,
        ..SimConfig::default()
    };
    let handle = sim::start(&a.addr, config).await?;
    eprintln!(
        "provider-sim listening on http://{} (api_base {})",
        handle.addr,
        handle.api_base()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
