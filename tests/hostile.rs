//! Hostile input, through the real stack (api + worker over NATS, Redis, Postgres and the
//! provider simulator): every case answers at once with a 4xx naming the field, or runs
//! to a terminal state; the worker lives on and a normal job afterwards succeeds.
//!
//! Client requests carry a timeout well under the 30 s a stuck group-commit batch used to
//! take, so a case that stalls fails here instead of passing slowly.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, Fault, SimConfig, SimHandle};
use sluice_testkit::{eventually, Stack, TestEnv};

use common::{wait_job, KEY};

/// Longer than any answer should take on a loaded machine, shorter than a stall.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(12);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap_or_default()
}

fn deployment(group: &str, id: &str, sim: &SimHandle) -> String {
    format!(
        "  - model_name: {group}
    litellm_params: {{model: openai/sim, api_base: '{}', api_key: sk-test-secret-key-123456}}
    model_info: {{id: {id}}}
",
        sim.api_base()
    )
}

fn config(deployments: &[String], router: &str) -> String {
    format!(
        "model_list:\n{}router_settings:\n  num_retries: 0\n{router}\ngeneral_settings: {{master_key: {KEY}}}\n",
        deployments.concat()
    )
}

/// A simulator that answers every request with `fault`.
async fn faulty(fault: Fault) -> Result<SimHandle> {
    Ok(sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: u64::MAX,
            fault: Some(fault),
            ..Default::default()
        },
    )
    .await?)
}

async fn submit(http: &reqwest::Client, api: &str, body: &Value) -> Result<reqwest::Response> {
    Ok(http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await?)
}

async fn submit_ok(http: &reqwest::Client, api: &str, body: &Value) -> Result<String> {
    let r = submit(http, api, body).await?;
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status == 202, "submit answered {status}: {v}");
    v["id"].as_str().map(str::to_string).context("no id")
}

fn job(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// A 400 naming `param`.
async fn refused(r: reqwest::Response, param: &str) -> Result<Value> {
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status == 400, "expected 400 for {param}, got {status}: {v}");
    anyhow::ensure!(v["error"]["param"] == param, "expected param {param}: {v}");
    Ok(v)
}

/// A normal job afterwards still succeeds: the worker survived.
async fn normal_job_succeeds(http: &reqwest::Client, api: &str) -> Result<()> {
    let id = submit_ok(http, api, &job("fast", "an ordinary question")).await?;
    let v = wait_job(http, api, &id, KEY).await?;
    anyhow::ensure!(v["status"] == "succeeded", "normal job after: {v}");
    Ok(())
}

/// The SSE text of `GET /v1/jobs/{id}/events` (the job has finished).
async fn sse_text(http: &reqwest::Client, api: &str, id: &str) -> Result<String> {
    Ok(http
        .get(format!("{api}/v1/jobs/{id}/events"))
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The `data:` of the SSE event named `name`.
fn sse_event(text: &str, name: &str) -> Option<Value> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == format!("event: {name}") {
            let data = lines.next()?.strip_prefix("data: ")?;
            return serde_json::from_str(data).ok();
        }
    }
    None
}

type Received = Arc<Mutex<Vec<String>>>;

/// A webhook receiver on loopback; records bodies, answers 200.
async fn receiver(received: Received) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_in_metadata_is_refused_at_once_and_nul_in_content_runs_without_slowing_others(
) -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&config(&[deployment("fast", "fast-1", &s)], ""), "")?,
        1,
    )
    .await?;
    let http = http();
    let api = &stack.api_url;

    let mut bad = job("fast", "hello");
    bad["metadata"] = json!({"note": "a\u{0000}b"});
    let v = refused(submit(&http, api, &bad).await?, "metadata.note").await?;
    assert!(v["error"]["message"].as_str().unwrap().contains("NUL"));

    // Twenty submits with NUL in the message content from one tenant and twenty ordinary
    // ones from another, all at once: every one is accepted (none waits on a stuck batch).
    let nul = (0..20).map(|i| {
        let http = http.clone();
        let body = job("fast", &format!("question {i} with a \u{0000} inside"));
        async move { submit_ok(&http, api, &body).await }
    });
    let plain = (0..20).map(|i| {
        let http = http.clone();
        let body = job("fast", &format!("ordinary question {i}"));
        async move { submit_ok(&http, api, &body).await }
    });
    let (nul, plain) = futures::future::join(
        futures::future::join_all(nul),
        futures::future::join_all(plain),
    )
    .await;
    let nul: Vec<String> = nul.into_iter().collect::<Result<_>>()?;
    let plain: Vec<String> = plain.into_iter().collect::<Result<_>>()?;
    for id in nul.iter().chain(&plain) {
        assert_eq!(wait_job(&http, api, id, KEY).await?["status"], "succeeded");
    }
    // The provider gets the content exactly as sent.
    let id = submit_ok(&http, api, &job("fast", "one more \u{0000} alone")).await?;
    assert_eq!(wait_job(&http, api, &id, KEY).await?["status"], "succeeded");
    let (_, last) = s.last_request().context("no request")?;
    assert!(last.to_string().contains("\\u0000"), "{last}");
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_in_the_provider_answer_is_stored_losslessly_and_returned_as_sent() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let nul = faulty(Fault::NulContent).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("fast", "fast-1", &s),
            deployment("nul", "nul-1", &nul),
        ],
        "",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = http();
    let api = &stack.api_url;
    for stream in [false, true] {
        let mut body = job("nul", "say it");
        body["stream"] = json!(stream);
        let id = submit_ok(&http, api, &body).await?;
        let v = wait_job(&http, api, &id, KEY).await?;
        assert_eq!(v["status"], "succeeded", "{v}");
        let content = v["result"]["choices"][0]["message"]["content"]
            .as_str()
            .context("no content")?;
        assert!(
            content.starts_with("nul\u{0000}in\u{0000}text "),
            "{content:?}"
        );
        let text = sse_text(&http, api, &id).await?;
        let done = sse_event(&text, "done").context("no done event")?;
        assert_eq!(done["result"]["choices"][0]["message"]["content"], content);
    }
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_refuses_fails_alone_and_at_once_and_the_rest_of_its_batch_is_written(
) -> Result<()> {
    use futures::future::BoxFuture;
    use sluice_core::group_commit::{Batcher, Flush, FlushError};
    use sluice_core::store::{NewJob, Recorded};
    use sluice_core::Store;

    struct Jobs(Store);
    impl Flush<NewJob> for Jobs {
        type Out = Recorded;
        fn flush<'a>(
            &'a self,
            items: &'a [NewJob],
        ) -> BoxFuture<'a, Result<Vec<Recorded>, FlushError>> {
            Box::pin(async move {
                self.0
                    .record_new_jobs(items)
                    .await
                    .map_err(FlushError::from)
            })
        }
    }
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let tracker = tokio_util::task::TaskTracker::new();
    let jobs = Batcher::spawn("jobs", 64, &tracker, Jobs(store.clone()));
    let new_job = |i: usize| NewJob {
        id: uuid::Uuid::now_v7(),
        owner: "master".into(),
        idempotency_key: None,
        model_group: "fast".into(),
        tier: sluice_schemas::Tier::Normal,
        reply_subject: None,
        metadata: Some(json!({"i": i, "nul": "a\u{0000}b"})),
        // Postgres cannot hold this timestamp: the row is refused (a data exception).
        created_at: if i == 7 {
            chrono::DateTime::<chrono::Utc>::MIN_UTC
        } else {
            chrono::Utc::now()
        },
        subject: None,
        payload: None,
        request_id: None,
        traceparent: None,
    };
    let writes = (0..16).map(|i| {
        let jobs = jobs.clone();
        let job = new_job(i);
        async move { (i, job.id, jobs.write(job).await) }
    });
    let outcomes = tokio::time::timeout(CLIENT_TIMEOUT, futures::future::join_all(writes))
        .await
        .context("a refused row held its batch")?;
    for (i, id, out) in outcomes {
        if i == 7 {
            assert!(out.is_err(), "the bad row was written");
        } else {
            assert!(matches!(out, Ok(Recorded::New)), "row {i}: {out:?}");
            let row = store.job(id).await?.context("row missing")?;
            // NUL in stored text is replaced, not allowed to spoil the batch.
            assert_eq!(row.metadata.unwrap()["nul"], "a\u{FFFD}b");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destinations_pointing_inward_are_refused_naming_the_field() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&config(&[deployment("fast", "fast-1", &s)], ""), "")?,
        1,
    )
    .await?;
    let http = http();
    let api = &stack.api_url;
    for subject in [
        "$JS.API.STREAM.DELETE.SLUICE_JOBS".to_string(),
        "$SYS.REQ.SERVER.PING".to_string(),
        format!("{}.jobs.critical", env.prefix),
        format!("{}.events.x", env.prefix),
        "orders.*".to_string(),
        "orders.>".to_string(),
        "orders..done".to_string(),
    ] {
        let mut body = job("fast", "x");
        body["reply_subject"] = json!(subject);
        refused(submit(&http, api, &body).await?, "reply_subject").await?;
    }
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:9000/",
        "http://10.0.0.5/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://2130706433/",
        "ftp://example.com/",
    ] {
        let mut body = job("fast", "x");
        body["webhook_url"] = json!(url);
        refused(submit(&http, api, &body).await?, "webhook_url").await?;
    }
    // A literal subject outside Sluice's prefix gets the terminal event.
    let client = async_nats::connect(&env.nats_url).await?;
    let subject = format!("orders.{}.done", env.prefix);
    let mut sub = client.subscribe(subject.clone()).await?;
    client.flush().await?;
    let mut body = job("fast", "x");
    body["reply_subject"] = json!(subject);
    let id = submit_ok(&http, api, &body).await?;
    let msg = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await?
        .context("no reply")?;
    let v: Value = serde_json::from_slice(&msg.payload)?;
    assert_eq!(v["job_id"], id.as_str());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_envelope_published_straight_to_nats_cannot_send_its_result_inward() -> Result<()> {
    let received: Received = Arc::default();
    let hook = receiver(received.clone()).await?;
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&config(&[deployment("fast", "fast-1", &s)], ""), "")?,
        1,
    )
    .await?;
    let http = http();
    let subjects = sluice_schemas::Subjects::new(&env.prefix);
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    // A trusted service skips the api's checks: the worker checks again at delivery.
    let id = uuid::Uuid::now_v7();
    let envelope = json!({
        "id": id,
        "request": {"model": "fast", "messages": [{"role": "user", "content": "x"}]},
        "tier": "normal",
        "reply_subject": format!("$JS.API.STREAM.DELETE.{}", subjects.events_stream()),
        "webhook_url": hook,
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    js.publish_with_headers(
        subjects.jobs(sluice_schemas::Tier::Normal),
        headers,
        serde_json::to_vec(&envelope)?.into(),
    )
    .await?
    .await?;
    let v = wait_job(&http, &stack.api_url, &id.to_string(), KEY).await?;
    assert_eq!(v["status"], "succeeded");
    let store = env.store().await?;
    let status: String = eventually(Duration::from_secs(30), "webhook outcome", || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT webhook_status FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .ok()
            .flatten()
    })
    .await?;
    assert_eq!(status, "failed", "a loopback webhook was delivered");
    assert!(
        received.lock().unwrap().is_empty(),
        "the loopback receiver was called"
    );
    assert!(
        js.get_stream(subjects.events_stream()).await.is_ok(),
        "the reply subject reached the JetStream API"
    );
    normal_job_succeeds(&http, &stack.api_url).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_redirect_to_another_host_is_an_attempt_error_naming_the_location() -> Result<()>
{
    let catcher = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let mover = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: u64::MAX,
            fault: Some(Fault::Redirect),
            redirect_to: Some(catcher.base()),
            ..Default::default()
        },
    )
    .await?;
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("fast", "fast-1", &s),
            deployment("moved", "moved-1", &mover),
        ],
        "",
    );
    let stack = Stack::start(env.config(&yaml, "")?, 1).await?;
    let http = http();
    let api = &stack.api_url;
    let id = submit_ok(&http, api, &job("moved", "follow me")).await?;
    let v = wait_job(&http, api, &id, KEY).await?;
    assert_eq!(v["status"], "failed", "{v}");
    let message = v["attempt_log"][0]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(&format!("{}/v1/chat/completions", catcher.base())),
        "{message}"
    );
    assert_eq!(
        catcher.requests(),
        0,
        "the redirect was followed, prompt and key along"
    );
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absurd_retry_after_and_huge_indexes_end_their_jobs_and_the_worker_lives_on() -> Result<()>
{
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let limited = faulty(Fault::HugeRetryAfter).await?;
    let indexed = faulty(Fault::HugeIndex).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("fast", "fast-1", &s),
            deployment("limited", "limited-1", &limited),
            deployment("indexed", "indexed-1", &indexed),
        ],
        "  fallbacks: [{limited: [fast]}]",
    );
    // One slot: a job that never ended would keep the normal job after it from running.
    let stack = Stack::start(env.config(&yaml, "  worker: {capacity: 1}")?, 1).await?;
    let http = http();
    let api = &stack.api_url;

    let id = submit_ok(&http, api, &job("limited", "wait for ever?")).await?;
    let v = wait_job(&http, api, &id, KEY).await?;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["attempt_log"][0]["error"]["class"], "rate_limit");

    let mut body = job("indexed", "index me");
    body["stream"] = json!(true);
    let id = submit_ok(&http, api, &body).await?;
    let v = wait_job(&http, api, &id, KEY).await?;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("choice index"),
        "{v}"
    );
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_task_that_panics_ends_failed_internal_and_the_worker_lives_on() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // One concurrent call on the deployment and one worker slot: a job that kept either
    // would keep the next job from running.
    let yaml = config(&[deployment("fast", "fast-1", &s)], "").replace(
        "api_key: sk-test-secret-key-123456}",
        "api_key: sk-test-secret-key-123456, max_parallel_requests: 1, timeout: 300}",
    );
    let stack = Stack::start(env.config(&yaml, "  worker: {capacity: 1}")?, 1).await?;
    let http = http();
    let api = &stack.api_url;
    let mut body = job("fast", "x");
    // Debug builds only: the call panics in the job's task, after admission (see
    // worker/src/panics.rs).
    body["user"] = json!("sluice-debug-panic");
    let id = submit_ok(&http, api, &body).await?;
    let v = wait_job(&http, api, &id, KEY).await?;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["class"], "internal");
    // Its slot, in-flight entry and concurrency lease are free: the next job runs.
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_over_max_payload_run_and_a_large_answer_reaches_every_destination() -> Result<()> {
    let received: Received = Arc::default();
    let hook = receiver(received.clone()).await?;
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let large = faulty(Fault::LargeAnswer).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("fast", "fast-1", &s),
            deployment("large", "large-1", &large),
        ],
        "",
    );
    let stack = Stack::start(
        env.config(&yaml, "  safety: {webhook_allow_private: true}")?,
        1,
    )
    .await?;
    let client = async_nats::connect(&env.nats_url).await?;
    let max_payload = client.server_info().max_payload;
    assert!(
        max_payload < 1_500_000,
        "the server takes {max_payload} bytes"
    );
    let http = http();
    let api = &stack.api_url;

    // A request larger than the server's max_payload (but under max_body_bytes).
    let big = "y".repeat(1_500_000);
    let id = submit_ok(&http, api, &job("fast", &big)).await?;
    let v = wait_job(&http, api, &id, KEY).await?;
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, sent) = s.last_request().context("no request")?;
    assert_eq!(
        sent["messages"][0]["content"].as_str().map(str::len),
        Some(1_500_000)
    );

    // An answer larger than max_payload: GET, SSE, the webhook and the reply subject.
    let subject = format!("big.{}.done", env.prefix);
    let mut sub = client.subscribe(subject.clone()).await?;
    client.flush().await?;
    let mut body = job("large", "a long answer please");
    body["reply_subject"] = json!(subject);
    body["webhook_url"] = json!(hook);
    let id = submit_ok(&http, api, &body).await?;
    let v = wait_job(&http, api, &id, KEY).await?;
    assert_eq!(v["status"], "succeeded", "{v}");
    let expected = "0123456789".repeat(150_000);
    assert_eq!(
        v["result"]["choices"][0]["message"]["content"],
        expected.as_str()
    );
    let text = sse_text(&http, api, &id).await?;
    let done = sse_event(&text, "done").context("no done event on SSE")?;
    assert_eq!(
        done["result"]["choices"][0]["message"]["content"],
        expected.as_str()
    );
    let hooked: String = eventually(Duration::from_secs(30), "webhook", || async {
        received.lock().unwrap().first().cloned()
    })
    .await?;
    let hooked: Value = serde_json::from_str(&hooked)?;
    assert_eq!(
        hooked["result"]["choices"][0]["message"]["content"],
        expected.as_str()
    );
    // The reply subject names the job whose row holds the whole event.
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await?
        .context("no reply")?;
    let reference = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Sluice-Body-Ref"))
        .map(|v| v.as_str().to_string());
    assert_eq!(reference.as_deref(), Some(id.as_str()));
    let slim: Value = serde_json::from_slice(&msg.payload)?;
    assert_eq!(slim["status"], "succeeded");

    // Streamed, the one 1.5 MB chunk reaches a streaming client in slices, whole.
    let mut body = job("large", "a long answer, streamed");
    body["stream"] = json!(true);
    let text = http
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let streamed: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed.len(), expected.len());
    assert!(streamed == expected, "the streamed answer differs");
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_completions_honours_idempotency_key() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&config(&[deployment("fast", "fast-1", &s)], ""), "")?,
        1,
    )
    .await?;
    let http = http();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{}/v1/chat/completions", stack.api_url))
            .bearer_auth(KEY)
            .header("Idempotency-Key", "order-42")
            .json(&job("fast", "once only"))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        ids.push(
            r.headers()
                .get("x-sluice-job-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
        let v: Value = r.json().await?;
        assert_eq!(v["object"], "chat.completion");
    }
    assert!(ids[0].is_some());
    assert_eq!(
        ids[0], ids[1],
        "a repeated Idempotency-Key made a second job"
    );
    assert_eq!(s.requests(), 1);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_streams_are_capped_per_key_and_by_bytes() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let hang = faulty(Fault::Hang).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("fast", "fast-1", &s),
            deployment("slow", "slow-1", &hang),
        ],
        "",
    );
    let stack = Stack::start(
        env.config(
            &yaml,
            "  safety: {max_streams_per_key: 2, max_stream_bytes: 400}",
        )?,
        1,
    )
    .await?;
    let http = http();
    let api = &stack.api_url;
    let id = submit_ok(&http, api, &job("slow", "never answered")).await?;
    let open = |http: reqwest::Client| {
        let url = format!("{api}/v1/jobs/{id}/events");
        async move { http.get(url).bearer_auth(KEY).send().await }
    };
    let first = open(http.clone()).await?;
    let second = open(http.clone()).await?;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open(http.clone()).await?;
    assert_eq!(third.status(), 429);
    let v: Value = third.json().await?;
    assert_eq!(v["error"]["code"], "too_many_streams");
    drop(first);
    let again = eventually(Duration::from_secs(40), "a place to free up", || {
        let http = http.clone();
        async move {
            let r = open(http).await.ok()?;
            (r.status() == 200).then_some(r)
        }
    })
    .await?;
    drop((second, again));
    http.post(format!("{api}/v1/jobs/{id}/cancel"))
        .bearer_auth(KEY)
        .send()
        .await?;

    // A stream that passes the byte limit ends with an error naming it.
    let mut body = job("fast", "stream me");
    body["stream"] = json!(true);
    let id = submit_ok(&http, api, &body).await?;
    assert_eq!(wait_job(&http, api, &id, KEY).await?["status"], "succeeded");
    let text = sse_text(&http, api, &id).await?;
    assert!(text.contains("stream_too_large"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_key_repeated_costs_no_database_query() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&config(&[deployment("fast", "fast-1", &s)], ""), "")?,
        1,
    )
    .await?;
    let http = http();
    let get = |key: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/models", stack.api_url);
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    const UNKNOWN: &str =
        "sk-sluice-0000000000000000000000000000000000000000000000000000000000000000";
    assert_eq!(get(UNKNOWN).await?, 401);
    // From here on a key lookup in Postgres fails.
    let store = env.store().await?;
    sqlx::query("ALTER TABLE api_keys RENAME TO api_keys_away")
        .execute(store.pool())
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(UNKNOWN).await?,
        401,
        "the repeated unknown key asked Postgres"
    );
    const OTHER: &str =
        "sk-sluice-1111111111111111111111111111111111111111111111111111111111111111";
    assert_eq!(get(OTHER).await?, 503, "a new unknown key is looked up");
    sqlx::query("ALTER TABLE api_keys_away RENAME TO api_keys")
        .execute(store.pool())
        .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_query_is_cut_by_statement_timeout() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(
            &config(&[deployment("fast", "fast-1", &s)], ""),
            "  safety: {statement_timeout_secs: 1}",
        )?,
        1,
    )
    .await?;
    let http = http();
    let api = &stack.api_url;
    let id = submit_ok(&http, api, &job("fast", "x")).await?;
    wait_job(&http, api, &id, KEY).await?;
    let store = env.store().await?;
    let mut tx = store.pool().begin().await?;
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let r = http
        .get(format!("{api}/v1/jobs/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .context("the read waited on the lock without a statement timeout")?;
    assert_eq!(r.status(), 503);
    tx.rollback().await?;
    let r = http
        .get(format!("{api}/v1/jobs/{id}"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_fields_are_bounded_and_an_aborted_upload_leaves_nothing() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&config(&[deployment("fast", "fast-1", &s)], ""), "")?,
        1,
    )
    .await?;
    let http = http();
    let url = format!("{}/v1/files", stack.api_url);
    let form = reqwest::multipart::Form::new()
        .text("purpose", "b".repeat(1024 * 1024))
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"{}\n".to_vec()).file_name("in.jsonl"),
        );
    let r = http
        .post(&url)
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await?;
    let v = refused(r, "purpose").await?;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("limit"),
        "{v}"
    );

    // The client goes away in the middle of the file.
    let line = format!(
        "{}\n",
        json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": job("fast", "x")})
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(line.repeat(200).into_bytes()),
        Err(std::io::Error::other("client went away")),
    ];
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(
        futures::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c
        }),
    ))
    .file_name("in.jsonl");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", part);
    assert!(http
        .post(&url)
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .is_err());
    let store = env.store().await?;
    eventually(
        Duration::from_secs(10),
        "the unfinished upload to be removed",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
                .fetch_one(store.pool())
                .await
                .ok()?;
            (n == 0).then_some(())
        },
    )
    .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_line_over_max_payload_runs_and_its_output_is_whole() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let large = faulty(Fault::LargeAnswer).await?;
    let env = TestEnv::new().await?;
    let yaml = config(
        &[
            deployment("fast", "fast-1", &s),
            deployment("large", "large-1", &large),
        ],
        "",
    );
    let stack = Stack::start(env.config(&yaml, "  batches:\n    poll_ms: 100")?, 1).await?;
    let http = http();
    let api = &stack.api_url;
    // One line whose request is larger than a NATS message, one whose answer is.
    let big = "z".repeat(1_500_000);
    let input = format!(
        "{}\n{}\n",
        json!({"custom_id": "big-ask", "method": "POST", "url": "/v1/chat/completions", "body": job("fast", &big)}),
        json!({"custom_id": "big-answer", "method": "POST", "url": "/v1/chat/completions", "body": job("large", "long")}),
    );
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(input.into_bytes()).file_name("in.jsonl"),
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
    let batch: Value = http
        .post(format!("{api}/v1/batches"))
        .bearer_auth(KEY)
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = batch["id"].as_str().context("batch id")?.to_string();
    let done = eventually(Duration::from_secs(90), "the batch to end", || async {
        let v: Value = http
            .get(format!("{api}/v1/batches/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(v["status"].as_str(), Some("completed" | "failed")).then_some(v)
    })
    .await?;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 2, "{done}");
    let output = http
        .get(format!(
            "{api}/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap_or("")
        ))
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let answer = output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["custom_id"] == "big-answer")
        .context("no big-answer line")?;
    assert_eq!(
        answer["response"]["body"]["choices"][0]["message"]["content"]
            .as_str()
            .map(str::len),
        Some(1_500_000)
    );
    normal_job_succeeds(&http, api).await?;
    stack.stop().await;
    Ok(())
}
