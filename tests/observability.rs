//! Traces, request ids and usage callbacks, end to end: a `sluice api` and a `sluice worker`
//! process export OTLP/HTTP protobuf to the testkit's receiver (`tests/src/otlp.rs`), which
//! also plays Langfuse's ingestion API.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{job, wait_job, KEY};
use serde_json::Value;
use sluice_testkit::otlp::{Receiver, SpanSeen};
use sluice_testkit::servers::free_port;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, TestEnv};

const LF_PUBLIC: &str = "pk-lf-test-0001";
const LF_SECRET: &str = "sk-lf-test-secret-0001";

/// A priced group on the simulator, with LiteLLM's production Langfuse callback line.
fn models(sim: &sim::SimHandle) -> String {
    format!(
        "model_list:
  - model_name: traced
    litellm_params:
      model: openai/sim-model
      api_base: {}
      api_key: sk-test-secret-key-123456
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      id: traced-1
litellm_settings:
  success_callback: [\"langfuse\"]
general_settings:
  master_key: {KEY}
",
        sim.api_base()
    )
}

/// `sluice <command>` with traces and Langfuse pointed at `receiver`, started.
fn spawn(
    command: &str,
    config: &std::path::Path,
    receiver: &Receiver,
) -> Result<tokio::process::Child> {
    Ok(sluice(command, config, receiver).spawn()?)
}

/// `sluice <command>` with traces and Langfuse pointed at `receiver`.
fn sluice(command: &str, config: &std::path::Path, receiver: &Receiver) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg(command)
        .arg("--config")
        .arg(config)
        // JSON logs; the api's access lines are read by the test.
        .arg("--log-json")
        .env("RUST_LOG", "warn,sluice::access=info")
        .stderr(std::process::Stdio::piped())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("LANGFUSE_PUBLIC_KEY", LF_PUBLIC)
        .env("LANGFUSE_SECRET_KEY", LF_SECRET)
        .env("LANGFUSE_HOST", &receiver.url)
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("SLUICE_API_ADDR")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

struct Running {
    api_url: String,
    env: TestEnv,
    /// The api's log lines so far.
    api_log: Arc<Mutex<Vec<String>>>,
    _api: tokio::process::Child,
    _worker: tokio::process::Child,
    _sim: sim::SimHandle,
}

async fn start(receiver: &Receiver) -> Result<Running> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 3,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let http = reqwest::Client::new();
    // A free port may be taken by someone else before the api binds it: then again.
    let mut tries = 0;
    let (mut api, config, api_url) = loop {
        tries += 1;
        let port = free_port();
        let config = env.write_config(&models(&sim), &format!("  api_addr: 127.0.0.1:{port}"))?;
        let mut api = spawn("api", &config, receiver)?;
        let api_url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let ready = loop {
            if let Ok(Some(status)) = api.try_wait() {
                break Err(status);
            }
            let up = http.get(format!("{api_url}/readyz")).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                break Ok(());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "api not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match ready {
            Ok(()) => break (api, config, api_url),
            Err(status) if tries < 3 => eprintln!("api exited ({status}); another port"),
            Err(status) => anyhow::bail!("api exited: {status}"),
        }
    };
    let mut worker = spawn("worker", &config, receiver)?;
    let api_log = Arc::new(Mutex::new(Vec::new()));
    collect(api.stderr.take(), Some(Arc::clone(&api_log)));
    collect(worker.stderr.take(), None);
    Ok(Running {
        api_url,
        env,
        api_log,
        _api: api,
        _worker: worker,
        _sim: sim,
    })
}

/// Reads a child's stderr to the end, echoing it, keeping its lines in `keep`.
fn collect(stderr: Option<tokio::process::ChildStderr>, keep: Option<Arc<Mutex<Vec<String>>>>) {
    let Some(stderr) = stderr else { return };
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if let Some(keep) = &keep {
                keep.lock().unwrap().push(line);
            }
        }
    });
}

/// Submits one job (with `headers`), waits for it; returns its id and the response's
/// request id.
async fn run_job(
    run: &Running,
    headers: &[(&str, &str)],
    stream: bool,
) -> Result<(String, String)> {
    let http = reqwest::Client::new();
    let mut req = http
        .post(format!("{}/v1/jobs", run.api_url))
        .bearer_auth(KEY)
        .json(&job("traced", stream));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    assert_eq!(resp.status(), 202);
    let request_id = resp
        .headers()
        .get("x-request-id")
        .context("no x-request-id echoed")?
        .to_str()?
        .to_string();
    let v: Value = resp.json().await?;
    let id = v["id"].as_str().context("no id")?.to_string();
    let done = wait_job(&http, &run.api_url, &id, KEY).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    Ok((id, request_id))
}

/// The spans of the trace holding the job span of `job_id`, once the worker's record and
/// publish spans are in.
async fn trace_of(receiver: &Receiver, job_id: &str) -> Result<Vec<SpanSeen>> {
    eventually(Duration::from_secs(20), "the job's trace", || async {
        let spans = receiver.spans();
        let job = spans
            .iter()
            .find(|s| s.name == "job" && s.attr("sluice.job_id") == Some(&Value::from(job_id)))?;
        let trace: Vec<SpanSeen> = spans
            .iter()
            .filter(|s| s.trace_id == job.trace_id)
            .cloned()
            .collect();
        let names: HashSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        ["publish events", "record", "POST /v1/jobs"]
            .iter()
            .all(|n| names.contains(n))
            .then_some(trace)
    })
    .await
    .with_context(|| {
        let seen: Vec<String> = receiver
            .spans()
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} {:?}",
                    s.service,
                    s.name,
                    s.trace_id,
                    s.attr("sluice.job_id")
                )
            })
            .collect();
        format!("spans received: {seen:#?}")
    })
}

fn one<'a>(trace: &'a [SpanSeen], name: &str) -> &'a SpanSeen {
    let found: Vec<_> = trace.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {trace:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_api_and_worker_with_genai_attributes() -> Result<()> {
    let receiver = Receiver::start().await?;
    let run = start(&receiver).await?;
    let (id, request_id) = run_job(&run, &[], true).await?;
    let trace = trace_of(&receiver, &id).await?;

    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["sluice-api", "sluice-worker"]),
        "{trace:#?}"
    );
    let http = one(&trace, "POST /v1/jobs");
    assert_eq!(http.service, "sluice-api");
    assert_eq!(http.kind, 2, "server span");
    assert!(
        http.parent_span_id.is_empty(),
        "the request starts the trace"
    );
    assert_eq!(
        http.attr("http.response.status_code"),
        Some(&Value::from(202))
    );
    assert_eq!(
        http.attr("sluice.request_id"),
        Some(&Value::from(request_id.as_str()))
    );
    let enqueue = one(&trace, "send jobs");
    assert_eq!(enqueue.parent_span_id, http.span_id);
    assert_eq!(
        enqueue.attr("sluice.job_id"),
        Some(&Value::from(id.as_str()))
    );

    // The worker continues the trace from the message's headers.
    let job = one(&trace, "job");
    assert_eq!(job.service, "sluice-worker");
    assert_eq!(job.parent_span_id, enqueue.span_id);
    assert!(job.attr("sluice.cost").and_then(Value::as_f64).unwrap() > 0.0);
    assert_eq!(
        job.attr("sluice.deployment"),
        Some(&Value::from("traced-1"))
    );
    for name in ["queue wait", "admission", "record", "publish events"] {
        assert_eq!(one(&trace, name).parent_span_id, job.span_id, "{name}");
    }

    let call = one(&trace, "chat sim-model");
    assert_eq!(call.parent_span_id, job.span_id);
    assert_eq!(call.kind, 3, "client span");
    assert_eq!(
        call.attr("gen_ai.operation.name"),
        Some(&Value::from("chat"))
    );
    assert_eq!(
        call.attr("gen_ai.provider.name"),
        Some(&Value::from("openai"))
    );
    assert_eq!(
        call.attr("gen_ai.request.model"),
        Some(&Value::from("sim-model"))
    );
    assert!(call
        .attr("gen_ai.response.model")
        .and_then(Value::as_str)
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        call.attr("gen_ai.usage.output_tokens"),
        Some(&Value::from(3))
    );
    assert!(
        call.attr("gen_ai.usage.input_tokens")
            .and_then(Value::as_i64)
            .unwrap()
            > 0
    );
    assert!(call.attr("sluice.cost").and_then(Value::as_f64).unwrap() > 0.0);
    assert_eq!(
        call.attr("sluice.deployment"),
        Some(&Value::from("traced-1"))
    );
    assert!(call.attr("error.type").is_none());

    // The request id is stored with the job.
    let pool = sqlx::PgPool::connect(&run.env.database_url).await?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT request_id FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(stored.as_deref(), Some(request_id.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_traceparent_and_request_id_are_continued() -> Result<()> {
    let receiver = Receiver::start().await?;
    let run = start(&receiver).await?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let (id, request_id) = run_job(
        &run,
        &[
            ("traceparent", &traceparent),
            ("x-request-id", "client-req-42"),
        ],
        false,
    )
    .await?;
    assert_eq!(request_id, "client-req-42", "the caller's id is echoed");
    // The job shows the id it was submitted under.
    let shown = wait_job(&reqwest::Client::new(), &run.api_url, &id, KEY).await?;
    assert_eq!(shown["request_id"], "client-req-42", "{shown}");
    let trace = trace_of(&receiver, &id).await?;
    assert!(trace.iter().all(|s| s.trace_id == trace_id));
    let http = one(&trace, "POST /v1/jobs");
    assert_eq!(http.parent_span_id, parent, "continues the client's span");
    assert_eq!(one(&trace, "job").service, "sluice-worker");

    // The request's JSON access-log line carries its id and the trace and span ids.
    let line = run
        .api_log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["request_id"] == "client-req-42")
        .context("no access-log line for the request")?;
    assert_eq!(line["target"], "sluice::access", "{line}");
    assert_eq!(line["fields"]["status"], 202, "{line}");
    assert_eq!(line["fields"]["route"], "/v1/jobs", "{line}");
    assert_eq!(line["trace_id"], trace_id, "{line}");
    assert_eq!(line["span_id"], http.span_id.as_str(), "{line}");

    // A malformed request id is replaced, not echoed.
    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", run.api_url))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await?;
    let echoed = resp.headers()["x-request-id"].to_str()?;
    assert!(!echoed.is_empty() && !echoed.contains(' '), "{echoed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_langfuse_callback_receives_the_generation() -> Result<()> {
    let receiver = Receiver::start().await?;
    let run = start(&receiver).await?;
    let (id, _) = run_job(&run, &[], false).await?;
    let (auth, generation, trace) = eventually(
        Duration::from_secs(20),
        "the langfuse generation",
        || async {
            receiver.ingestions().into_iter().find_map(|i| {
                let find = |kind: &str| {
                    i.batch
                        .iter()
                        .find(|e| {
                            e["type"] == kind
                                && e["body"]["traceId"].as_str().or(e["body"]["id"].as_str())
                                    == Some(id.as_str())
                        })
                        .cloned()
                };
                Some((
                    i.authorization.clone(),
                    find("generation-create")?,
                    find("trace-create")?,
                ))
            })
        },
    )
    .await?;
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{LF_PUBLIC}:{LF_SECRET}"))
    );
    assert_eq!(auth.as_deref(), Some(expected.as_str()));
    let g = &generation["body"];
    assert_eq!(g["model"], "sim-model");
    let usage = &g["usageDetails"];
    assert!(usage["input"].as_i64().unwrap() > 0, "{g}");
    assert_eq!(usage["output"], 3, "{g}");
    assert_eq!(
        usage["total"].as_i64(),
        Some(usage["input"].as_i64().unwrap() + 3)
    );
    // 1e-6 per input token, 2e-6 per output token.
    let cost = g["costDetails"]["total"].as_f64().unwrap();
    let want = usage["input"].as_f64().unwrap() * 1e-6 + 3.0 * 2e-6;
    assert!((cost - want).abs() < 1e-9, "cost {cost} vs {want}");
    assert!(g["startTime"].is_string() && g["endTime"].is_string());
    // The prompt is the generation's (and the trace's) input, the answer its output.
    let prompt = job("traced", false)["messages"].clone();
    assert_eq!(g["input"], prompt, "{g}");
    assert_eq!(trace["body"]["input"], prompt);
    assert_eq!(g["output"]["role"], "assistant", "{g}");
    assert_eq!(trace["body"]["name"], "traced");
    // The secret key never travels in a body.
    assert!(!generation.to_string().contains(LF_SECRET));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lines_continue_the_trace_of_the_request_that_created_the_batch() -> Result<()> {
    let receiver = Receiver::start().await?;
    let run = start(&receiver).await?;
    let http = reqwest::Client::new();
    let input: String = (1..=2)
        .map(|i| {
            let v = serde_json::json!({"custom_id": format!("line-{i}"), "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "traced", "max_tokens": 8,
                         "messages": [{"role": "user", "content": "hi"}]}});
            format!("{v}\n")
        })
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(input.into_bytes()).file_name("in.jsonl"),
        );
    let file: Value = http
        .post(format!("{}/v1/files", run.api_url))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let batch: Value = http
        .post(format!("{}/v1/batches", run.api_url))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(
            &serde_json::json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "priority": "normal"}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let batch_id = batch["id"].as_str().context("batch id")?.to_string();
    // Both lines' jobs run in the batch request's trace, under a span naming the batch.
    let jobs = eventually(Duration::from_secs(60), "both lines traced", || async {
        let spans = receiver.spans();
        let sends: Vec<&SpanSeen> = spans
            .iter()
            .filter(|s| s.attr("sluice.batch_id") == Some(&Value::from(batch_id.as_str())))
            .collect();
        let jobs: Vec<SpanSeen> = spans
            .iter()
            .filter(|s| s.name == "job" && sends.iter().any(|p| p.span_id == s.parent_span_id))
            .cloned()
            .collect();
        (jobs.len() == 2).then_some(jobs)
    })
    .await?;
    for job in &jobs {
        assert_eq!(job.trace_id, trace_id);
        assert_eq!(job.service, "sluice-worker");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_republished_from_the_outbox_continues_the_client_trace() -> Result<()> {
    let receiver = Receiver::start().await?;
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let port = free_port();
    let config = env.write_config(&models(&sim), &format!("  api_addr: 127.0.0.1:{port}"))?;
    // An api that dies right after recording the job: its publish never happens, and a
    // worker's reconciler publishes the job from the outbox.
    let mut doomed = sluice("api", &config, &receiver)
        .env("SLUICE_FAULT_EXIT_AT", "after_record")
        .spawn()?;
    collect(doomed.stderr.take(), None);
    let http = reqwest::Client::new();
    let api_url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "api ready", || async {
        let r = http.get(format!("{api_url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    let trace_id = "5b8aa5a2d2c872e8321cf37308d69df2";
    let answer = http
        .post(format!("{api_url}/v1/jobs"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{trace_id}-051581bf3cb55c13-01"))
        .header("Idempotency-Key", "republished-1")
        .json(&job("traced", false))
        .send()
        .await;
    assert!(answer.is_err(), "the api died before answering: {answer:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), doomed.wait()).await??;
    assert_eq!(
        status.code(),
        Some(137),
        "the api exited at the fault point"
    );
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = 'republished-1'")
            .fetch_one(&pool)
            .await?;
    let id = id.to_string();

    let mut worker = spawn("worker", &config, &receiver)?;
    collect(worker.stderr.take(), None);
    let job = eventually(Duration::from_secs(60), "the job span", || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.name == "job" && s.attr("sluice.job_id") == Some(&Value::from(id.as_str())))
    })
    .await?;
    assert_eq!(
        job.trace_id, trace_id,
        "the client's trace continues: {job:?}"
    );
    assert!(!job.parent_span_id.is_empty(), "{job:?}");
    eventually(Duration::from_secs(30), "the job succeeded", || async {
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .ok()?;
        (status == "succeeded").then_some(())
    })
    .await?;
    // Every span naming the job is in that one trace.
    let spans = receiver.spans();
    let traces: HashSet<&str> = spans
        .iter()
        .filter(|s| s.attr("sluice.job_id") == Some(&Value::from(id.as_str())))
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(traces, HashSet::from([trace_id]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_langfuse_batch_refused_at_first_is_sent_again() -> Result<()> {
    let receiver = Receiver::start().await?;
    // The first two posts are refused (503).
    receiver.fail_next_ingestions(2);
    let run = start(&receiver).await?;
    let (id, _) = run_job(&run, &[], false).await?;
    let generation = eventually(
        Duration::from_secs(30),
        "the generation, retried",
        || async {
            receiver.ingestions().into_iter().find_map(|i| {
                i.batch.into_iter().find(|e| {
                    e["type"] == "generation-create" && e["body"]["traceId"] == id.as_str()
                })
            })
        },
    )
    .await?;
    assert_eq!(generation["body"]["model"], "sim-model");
    assert_eq!(receiver.refused().1, 2, "two posts refused, then delivered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_export_refused_at_first_is_sent_again() -> Result<()> {
    let receiver = Receiver::start().await?;
    // Every export is refused (503) the first time: only a retried one gets in.
    receiver.refuse_first_try_of_each_export();
    let run = start(&receiver).await?;
    let (id, _) = run_job(&run, &[], false).await?;
    let trace = trace_of(&receiver, &id).await?;
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, HashSet::from(["sluice-api", "sluice-worker"]));
    assert!(
        receiver.refused().0 >= 2,
        "both services were refused at first"
    );
    Ok(())
}
