//! `sluice`: command-line dispatch. All service logic lives in the crates; the CLI's own
//! HTTP client of the API is `client.rs`.
#![forbid(unsafe_code)]
// The workspace lints, for the binary only: this package's integration tests
// (`tests/*.rs`) are test code and may unwrap.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::large_futures
)]

mod client;
mod jobs;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_core::Config;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: the worker allocates per job and per chunk,
/// and glibc malloc took a fifth of its CPU in the throughput profile (issue 9 note).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Asynchronous LLM job system")]
struct Cli {
    /// Path of sluice.yaml (a LiteLLM config.yaml plus a `sluice:` section).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Api,
    /// Run a worker.
    Worker,
    /// Apply database migrations.
    Migrate,
    /// Submit one job and wait for it.
    Submit(SubmitArgs),
    /// Follow a job's events until it ends.
    Tail {
        id: uuid::Uuid,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the JSON Schema of the job envelope (for services publishing straight to NATS).
    Schema,
    /// Check a config file: print the resolved groups, deployments and rules (secrets
    /// masked); exit non-zero on errors.
    #[command(name = "config")]
    ConfigCheck {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show each tier's backlog and the workers seen (master key).
    Queue {
        /// Keep refreshing the table until Ctrl-C.
        #[arg(long, short)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Submit a JSONL file as an OpenAI-style batch, follow it, fetch its results.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Recent jobs, newest first, filtered (a virtual key sees only its own).
    Jobs {
        #[command(flatten)]
        args: jobs::JobsArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What was spent, from the ledger (a virtual key sees only its own).
    Spend {
        /// model, key, provider, day or mode.
        #[arg(long, default_value = "model")]
        group_by: String,
        /// Start (2026-11-01 or RFC 3339); default 30 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive); default now.
        #[arg(long)]
        to: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create, list and delete virtual keys (master key).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Upload FILE (OpenAI batch input lines) and create a batch; prints its id.
    Submit {
        file: PathBuf,
        /// Follow the batch with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
        /// Tier of its lines: critical, high, normal, low.
        #[arg(long, short, default_value = "low")]
        priority: String,
        #[arg(long, default_value = "24h")]
        completion_window: String,
        /// A JSON object stored with the batch.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Show a batch (JSON); --wait follows it with a progress bar.
    Status {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Write a finished batch's output lines (and error lines) to a file.
    Results {
        id: String,
        /// Where the output lines go.
        #[arg(long, short)]
        output: PathBuf,
        /// Where the error lines go (default: appended to --output).
        #[arg(long)]
        errors: Option<PathBuf>,
    },
    /// Cancel a batch: queued lines stop, running ones finish.
    Cancel { id: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints it once (it is stored only as a hash).
    Create(KeyCreateArgs),
    /// List keys (ids and hints, never the keys).
    List,
    /// Revoke a key by id.
    Delete { id: String },
}

#[derive(clap::Args)]
struct KeyCreateArgs {
    /// A label for people.
    #[arg(long)]
    name: Option<String>,
    /// Model groups the key may use (repeat or comma-separate); all when omitted.
    #[arg(long = "models", value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long)]
    rpm_limit: Option<i64>,
    #[arg(long)]
    tpm_limit: Option<i64>,
    #[arg(long)]
    max_parallel_requests: Option<i64>,
    /// USD per --budget-duration.
    #[arg(long)]
    max_budget: Option<f64>,
    /// 30s, 30m, 24h, 30d.
    #[arg(long)]
    budget_duration: Option<String>,
    /// A JSON object stored with the key.
    #[arg(long)]
    metadata: Option<String>,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Load FILE and print what Sluice resolves from it.
    Check { file: PathBuf },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the Sluice API.
    #[arg(
        long,
        global = true,
        env = "SLUICE_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    api_url: String,
    /// API key (defaults to the master key).
    #[arg(long, global = true, env = "SLUICE_API_KEY")]
    key: Option<String>,
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// Model group.
    #[arg(long, short)]
    model: String,
    /// The user message.
    #[arg(long = "message", short = 'M')]
    message: String,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Priority: critical, high, normal, low (or 0-3).
    #[arg(long, short, default_value = "normal")]
    priority: String,
    /// Stream tokens as they arrive.
    #[arg(long)]
    stream: bool,
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Submit this many copies and print a summary instead of the text.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// With --count: how many jobs to have outstanding at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    api: ApiArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces are exported only by the services, under their own names.
    let service = match cli.command {
        Command::Api => Some("sluice-api"),
        Command::Worker => Some("sluice-worker"),
        _ => None,
    };
    let _telemetry = {
        let _inside = runtime.enter();
        match service {
            Some(name) => Some(sluice_core::telemetry::init(name, cli.log_json)),
            None => {
                init_tracing(cli.log_json);
                None
            }
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: errors that keep their source also show it.
            eprintln!("error: {}", sluice_core::error::chain_messages(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs for the commands that are not services (no traces).
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let load = || Config::load(cli.config.as_deref()).context("invalid configuration");
    match cli.command {
        Command::Api => {
            let config = load()?;
            let native = sluice_worker::native::Backend::new(&config)
                .context("cannot read the pricing file")?;
            sluice_api::serve(
                config,
                shutdown_on_signal(),
                Some(std::sync::Arc::new(native)),
            )
            .await?;
        }
        Command::Worker => {
            Box::pin(sluice_worker::run(load()?, shutdown_on_signal())).await?;
        }
        Command::Migrate => {
            let config = load()?;
            let store =
                sluice_core::Store::connect_with(&config.database_url, 2, &config.tls).await?;
            store.migrate().await?;
            println!("database migrated");
        }
        Command::ConfigCheck {
            action: ConfigAction::Check { file },
        } => match Config::load(Some(&file)) {
            Ok(config) => print!("{}", config.describe()),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&sluice_schemas::envelope_json_schema())?
            );
        }
        Command::Submit(args) => return submit(args).await,
        Command::Queue {
            watch,
            interval,
            json,
            api,
        } => {
            let client = client::Client::new(&api.api_url, api_key(api.key));
            return queue(&client, watch, interval, json).await;
        }
        Command::Batch { command, api } => {
            let client = client::Client::new(&api.api_url, api_key(api.key));
            return batch(&client, command).await;
        }
        Command::Jobs { args, api } => {
            let client = client::Client::new(&api.api_url, api_key(api.key));
            jobs::run(&client, args).await?;
        }
        Command::Spend {
            group_by,
            from,
            to,
            json,
            api,
        } => {
            let client = client::Client::new(&api.api_url, api_key(api.key));
            let v = client
                .spend(&group_by, from.as_deref(), to.as_deref())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", client::spend_table(&v));
            }
        }
        Command::Keys { command, api } => {
            let client = client::Client::new(&api.api_url, api_key(api.key));
            return keys(&client, command).await;
        }
        Command::Tail { id, api } => {
            let client = client::Client::new(&api.api_url, api_key(api.key));
            let mut stdout = std::io::stdout();
            let followed = client.follow(id, &mut stdout).await?;
            return Ok(report(&followed));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn queue(
    client: &client::Client,
    watch: bool,
    interval: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let every = std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    let stop = shutdown_on_signal();
    loop {
        let view = client.queue().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            if watch {
                // Clear the screen and go home, so the table refreshes in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", client::queue_table(&view));
        }
        let _ = std::io::stdout().flush();
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn keys(client: &client::Client, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        KeysCommand::Create(a) => {
            let metadata = a
                .metadata
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
                .transpose()
                .context("--metadata is not valid JSON")?;
            let settings = serde_json::json!({
                "name": a.name,
                "models": a.models,
                "rpm_limit": a.rpm_limit,
                "tpm_limit": a.tpm_limit,
                "max_parallel_requests": a.max_parallel_requests,
                "max_budget": a.max_budget,
                "budget_duration": a.budget_duration,
                "metadata": metadata,
            });
            let settings: sluice_core::keys::KeySettings =
                serde_json::from_value(settings).context("invalid key settings")?;
            let created = client.create_key(&settings).await?;
            eprintln!("the key is shown only now; store it safely");
            created
        }
        KeysCommand::List => client.list_keys().await?,
        KeysCommand::Delete { id } => client.delete_key(&id).await?,
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}

async fn batch(client: &client::Client, command: BatchCommand) -> anyhow::Result<ExitCode> {
    use sluice_schemas::batch::BatchStatus;
    match command {
        BatchCommand::Submit {
            file,
            wait,
            priority,
            completion_window,
            metadata,
        } => {
            let metadata = metadata
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
                .transpose()
                .context("--metadata is not valid JSON")?;
            let uploaded = client.upload_batch_file(&file).await?;
            eprintln!(
                "uploaded {} ({} bytes) as {}",
                file.display(),
                uploaded.bytes,
                uploaded.id
            );
            let created = client
                .create_batch(&serde_json::json!({
                    "input_file_id": uploaded.id,
                    "endpoint": sluice_schemas::batch::CHAT_COMPLETIONS,
                    "completion_window": completion_window,
                    "priority": priority,
                    "metadata": metadata,
                }))
                .await?;
            println!("{}", created.id);
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let ended = follow_batch(client, &created.id).await?;
            Ok(batch_exit(&ended))
        }
        BatchCommand::Status { id, wait } => {
            let b = if wait {
                follow_batch(client, &id).await?
            } else {
                client.batch(&id).await?
            };
            println!("{}", serde_json::to_string_pretty(&b)?);
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Results { id, output, errors } => {
            let b = client.batch(&id).await?;
            if !b.status.is_terminal() {
                anyhow::bail!("batch {id} is {}; results are ready when it ends", b.status);
            }
            let mut out = tokio::fs::File::create(&output)
                .await
                .with_context(|| format!("cannot create {}", output.display()))?;
            let mut written = 0;
            if let Some(f) = &b.output_file_id {
                written += client.download_file(f, &mut out).await?;
            }
            if let Some(f) = &b.error_file_id {
                match &errors {
                    Some(path) => {
                        let mut err = tokio::fs::File::create(path)
                            .await
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        client.download_file(f, &mut err).await?;
                    }
                    None => written += client.download_file(f, &mut out).await?,
                }
            }
            let c = b.request_counts;
            eprintln!(
                "batch {id} {}: {} completed, {} failed of {}; {written} bytes to {}",
                b.status,
                c.completed,
                c.failed,
                c.total,
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Cancel { id } => {
            let b = client.cancel_batch(&id).await?;
            println!("{}", serde_json::to_string_pretty(&b)?);
            Ok(
                if matches!(b.status, BatchStatus::Cancelling | BatchStatus::Cancelled) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
    }
}

/// Polls a batch with a progress bar (lines done of total, rate, ETA) until it ends.
async fn follow_batch(
    client: &client::Client,
    id: &str,
) -> anyhow::Result<sluice_schemas::batch::Batch> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} lines ({per_sec}, ETA {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let stop = shutdown_on_signal();
    loop {
        let b = client.batch(id).await?;
        let c = b.request_counts;
        let p = b.progress.unwrap_or_default();
        bar.set_length(c.total);
        bar.set_position(c.completed + c.failed);
        bar.set_message(format!(
            "{} · {} ok · {} failed · {} running · {} queued",
            b.status, c.completed, c.failed, p.running, p.queued
        ));
        if b.status.is_terminal() {
            bar.finish();
            eprintln!(
                "batch {id} {}: {} completed, {} failed of {}",
                b.status, c.completed, c.failed, c.total
            );
            if let Some(errors) = &b.errors {
                for e in &errors.data {
                    eprintln!("  {}: {}", e.code, e.message);
                }
            }
            return Ok(b);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.cancelled() => {
                bar.abandon();
                anyhow::bail!("stopped following batch {id} (it goes on; see `sluice batch status {id}`)");
            }
        }
    }
}

fn batch_exit(b: &sluice_schemas::batch::Batch) -> ExitCode {
    if b.status == sluice_schemas::batch::BatchStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn api_key(key: Option<String>) -> Option<String> {
    key.or_else(|| {
        std::env::var("SLUICE_MASTER_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    })
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = client::Client::new(&args.api.api_url, api_key(args.api.key));
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": args.message}));
    let mut body = serde_json::json!({
        "model": args.model,
        "messages": messages,
        "stream": args.stream,
        "priority": args.priority,
    });
    if let Some(n) = args.max_tokens {
        body["max_tokens"] = n.into();
    }
    if args.count > 1 {
        let s = client.run_many(&body, args.count, args.concurrency).await?;
        let ms = |d: std::time::Duration| d.as_millis();
        let unknown = if s.cost_unknown > 0 {
            format!(" ({} without a price)", s.cost_unknown)
        } else {
            String::new()
        };
        println!(
            "{} jobs, priority {}: {} succeeded, {} failed; latency p50 {} ms, p90 {} ms, max {} ms; cost ${}{unknown}",
            args.count,
            args.priority,
            s.succeeded,
            s.failed,
            ms(s.quantile(0.5)),
            ms(s.quantile(0.9)),
            ms(s.quantile(1.0)),
            s.cost.normalize(),
        );
        return Ok(if s.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let id = client
        .submit(&body, args.idempotency_key.as_deref())
        .await?;
    eprintln!("job {id} queued");
    let mut stdout = std::io::stdout();
    let followed = client.follow(id, &mut stdout).await?;
    if !args.stream {
        if let Some(done) = &followed.done {
            if let Some(result) = done.result.as_ref().and_then(|r| r.chat()) {
                for c in &result.choices {
                    if let Some(sluice_schemas::openai::Content::Text(t)) = &c.message.content {
                        print!("{t}");
                    }
                }
            }
        }
    }
    Ok(report(&followed))
}

/// Prints the terminal summary; the exit code says whether the job succeeded.
fn report(followed: &client::Followed) -> ExitCode {
    let mut out = std::io::stdout();
    let _ = writeln!(out);
    let Some(done) = &followed.done else {
        eprintln!("the event stream ended without a result");
        return ExitCode::FAILURE;
    };
    let cost = done
        .cost
        .map(|c| format!("${c}"))
        .unwrap_or_else(|| "unknown (no price configured)".into());
    match (&done.error, done.usage) {
        (None, Some(u)) => eprintln!(
            "{}: {} prompt + {} completion tokens, {} attempt(s), cost {cost}",
            done.status, u.prompt_tokens, u.completion_tokens, done.attempts
        ),
        (None, None) => eprintln!("{}: {} attempt(s), cost {cost}", done.status, done.attempts),
        (Some(e), _) => eprintln!(
            "{}: {} ({}) after {} attempt(s)",
            done.status, e.message, e.class, done.attempts
        ),
    }
    if done.status == sluice_schemas::JobStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
