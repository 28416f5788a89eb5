//! End to end through real NATS, Postgres and the simulator: submit → worker → events →
//! Postgres → GET.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{job, models, read_events, wait_job, KEY};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sluice_testkit::sim::{self, Fault, SimConfig};
use sluice_testkit::{Stack, TestEnv};

async fn submit(http: &reqwest::Client, api: &str, body: &Value) -> Result<(u16, Value)> {
    let r = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_job_publishes_chunks_in_order_then_done_and_is_recorded() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 6,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();

    let (status, accepted) = submit(&http, &stack.api_url, &job("fast", true)).await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(
        accepted["subjects"]["events"],
        format!("{}.events.{id}", env.prefix)
    );

    let events = read_events(&env, &id).await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    // role chunk + 6 words + finish chunk + usage chunk, then done.
    assert_eq!(
        kinds.iter().filter(|k| **k == "chunk").count(),
        9,
        "{kinds:?}"
    );
    assert_eq!(*kinds.last().unwrap(), "done");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "per-job sequence"
    );
    assert!(events.iter().all(|e| e.attempt == 1));
    let streamed: String = events
        .iter()
        .filter(|e| e.kind == "chunk")
        .filter_map(|e| {
            e.body["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();

    let done = &events.last().unwrap().body;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        done["result"]["choices"][0]["message"]["content"],
        streamed.as_str()
    );
    let usage = &done["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(c, 6);
    let expected_cost =
        Decimal::new(1, 6) * Decimal::from(p) + Decimal::new(2, 6) * Decimal::from(c);

    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["attempts"], 1);
    assert_eq!(
        view["result"]["choices"][0]["message"]["content"],
        streamed.as_str()
    );
    let cost: Decimal = view["cost"].to_string().parse()?;
    assert_eq!(cost, expected_cost);
    let attempt = &view["attempt_log"][0];
    assert_eq!(attempt["status"], "succeeded");
    assert_eq!(attempt["deployment"], "sim-1");
    assert_eq!(attempt["prompt_tokens"].as_u64(), Some(p));
    assert!(
        attempt["ttft_ms"].as_f64().is_some(),
        "streamed attempts record ttft"
    );
    assert!(attempt["latency_ms"].as_f64().is_some());
    assert_eq!(attempt["usage_estimated"], false);
    assert_eq!(sim.requests(), 1);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_job_succeeds_with_usage_and_cost_and_no_chunks() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 5,
            latency_ms: 20,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let (status, accepted) = submit(&http, &stack.api_url, &job("fast", false)).await?;
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap().to_string();
    let events = read_events(&env, &id).await?;
    assert_eq!(events.len(), 1, "only the done event: {events:?}");
    assert_eq!(events[0].kind, "done");
    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["usage"]["completion_tokens"], 5);
    assert!(view["cost"].as_f64().unwrap() > 0.0);
    assert!(view["attempt_log"][0]["ttft_ms"].is_null());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_resubmit_returns_the_same_job_and_runs_it_once() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let send = |key: &'static str| {
        http.post(format!("{}/v1/jobs", stack.api_url))
            .bearer_auth(KEY)
            .header("Idempotency-Key", key)
            .json(&job("fast", false))
            .send()
    };
    let first = send("order-42").await?;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await?;
    let again = send("order-42").await?;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await?;
    assert_eq!(first["id"], again["id"]);
    // The same key in the body works too.
    let mut body = job("fast", false);
    body["idempotency_key"] = json!("order-42");
    let (status, third) = submit(&http, &stack.api_url, &body).await?;
    assert_eq!(status, 200);
    assert_eq!(third["id"], first["id"]);
    // A different key is a different job.
    let other: Value = send("order-43").await?.json().await?;
    assert_ne!(other["id"], first["id"]);

    let id = first["id"].as_str().unwrap();
    wait_job(&http, &stack.api_url, id, KEY).await?;
    wait_job(&http, &stack.api_url, other["id"].as_str().unwrap(), KEY).await?;
    let store = env.store().await?;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(jobs, 2);
    assert_eq!(sim.requests(), 2, "each job called the provider once");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_errors_naming_the_field_and_nothing_is_enqueued() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let mut config = env.config(&models(&sim), "  max_body_bytes: 4096")?;
    config.max_body_bytes = 4096;
    let stack = Stack::start(config, 0).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs", stack.api_url);
    let raw = |body: &'static str| {
        http.post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = raw("{not json").await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    for (body, param) in [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (
            json!({"model": "", "messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "fast"}), "messages"),
        (json!({"model": "fast", "messages": []}), "messages"),
        (
            json!({"model": "fast", "messages": [{"role": "wizard", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
            "temperature",
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "priority": "urgent"}),
            "priority",
        ),
    ] {
        let (status, v) = submit(&http, &stack.api_url, &body).await?;
        assert_eq!(status, 400, "{body} -> {v}");
        assert_eq!(v["error"]["param"], param, "{body} -> {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    let (status, v) = submit(&http, &stack.api_url, &job("no-such-group", false)).await?;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["param"], "model");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-group"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("fast"),
        "lists valid groups: {v}"
    );

    let big = format!(
        "{{\"model\":\"fast\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(5000)
    );
    let r = http
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["code"], "request_too_large");

    let r = http
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&job("fast", false))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(
        !v.to_string().contains("sk-wrong"),
        "the presented key is not echoed"
    );
    let r = http.post(&url).json(&job("fast", false)).send().await?;
    assert_eq!(r.status(), 401);

    // Nothing reached the queue or the database.
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(sluice_schemas::Subjects::new(&env.prefix).jobs_stream())
        .await?;
    assert_eq!(stream.info().await?.state.messages, 0);
    let store = env.store().await?;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(jobs, 0);
    assert_eq!(sim.requests(), 0);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_retried_with_a_retry_event_and_both_attempts_recorded() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 1,
            fault: Some(Fault::Server),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let (_, accepted) = submit(&http, &stack.api_url, &job("fast", true)).await?;
    let id = accepted["id"].as_str().unwrap().to_string();
    let events = read_events(&env, &id).await?;
    assert_eq!(events[0].kind, "retry", "{events:?}");
    assert_eq!(events[0].body["error"]["class"], "server");
    assert_eq!(events.last().unwrap().kind, "done");
    assert_eq!(events.last().unwrap().attempt, 2);
    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(view["attempts"], 2);
    let log = view["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["status"], "failed");
    assert_eq!(log[0]["error"]["class"], "server");
    assert_eq!(log[1]["status"], "succeeded");
    assert_eq!(sim.requests(), 2);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_error_fails_the_job_at_once_with_the_provider_message() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            fail_first: 10,
            fault: Some(Fault::ContextWindow),
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let (_, accepted) = submit(&http, &stack.api_url, &job("fast", false)).await?;
    let id = accepted["id"].as_str().unwrap().to_string();
    let events = read_events(&env, &id).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "error");
    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["error"]["class"], "context_window");
    assert!(view["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length"));
    assert_eq!(sim.requests(), 1);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_published_straight_to_nats_is_tracked_and_bad_messages_go_to_the_dlq() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = sluice_schemas::Subjects::new(&env.prefix);

    let id = uuid::Uuid::now_v7();
    let envelope = json!({
        "id": id, "tier": "high",
        "request": {"model": "fast", "messages": [{"role": "user", "content": "from a service"}]},
    });
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id.to_string().as_str());
    js.publish_with_headers(
        subjects.jobs(sluice_schemas::Tier::High),
        h,
        serde_json::to_vec(&envelope)?.into(),
    )
    .await?
    .await?;
    js.publish(
        subjects.jobs(sluice_schemas::Tier::Normal),
        "{\"not\": \"an envelope\"}".into(),
    )
    .await?
    .await?;

    let http = reqwest::Client::new();
    let view = wait_job(&http, &stack.api_url, &id.to_string(), KEY).await?;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["priority"], "high");

    let dlq = js.get_stream(subjects.dlq_stream()).await?;
    let dlq_ref = &dlq;
    sluice_testkit::eventually(Duration::from_secs(10), "dead letter", move || async move {
        (dlq_ref.get_info().await.ok()?.state.messages == 1).then_some(())
    })
    .await?;
    let msg = dlq.get_last_raw_message_by_subject(&subjects.dlq()).await?;
    let reason = msg
        .headers
        .get("Sluice-Dlq-Reason")
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert!(reason.contains("unparseable"), "{reason}");
    let jobs = js.get_stream(subjects.jobs_stream()).await?;
    let jobs_ref = &jobs;
    sluice_testkit::eventually(
        Duration::from_secs(10),
        "work queue empty",
        move || async move { (jobs_ref.get_info().await.ok()?.state.messages == 0).then_some(()) },
    )
    .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_bridge_replays_a_finished_job_from_the_start_and_ends_with_done() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 4,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&sim), "")?, 1).await?;
    let http = reqwest::Client::new();
    let (_, accepted) = submit(&http, &stack.api_url, &job("fast", true)).await?;
    let id = accepted["id"].as_str().unwrap().to_string();
    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;

    // Subscribing after the job finished still gets every chunk.
    let text = http
        .get(format!("{}/v1/jobs/{id}/events", stack.api_url))
        .bearer_auth(KEY)
        .send()
        .await?
        .text()
        .await?;
    let mut parser = sluice_schemas::sse::SseParser::new();
    let mut events = Vec::new();
    parser.feed(text.as_bytes(), &mut events)?;
    parser.finish(&mut events);
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| e.event.is_none() && e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(chunks.len(), 7, "{text}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        view["result"]["choices"][0]["message"]["content"],
        content.as_str()
    );
    let n = events.len();
    assert_eq!(events[n - 2].event.as_deref(), Some("done"));
    assert_eq!(events[n - 1].data, "[DONE]");

    let r = http
        .get(format!(
            "{}/v1/jobs/{}/events",
            stack.api_url,
            uuid::Uuid::now_v7()
        ))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    stack.stop().await;
    Ok(())
}
