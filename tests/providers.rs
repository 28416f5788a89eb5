//! Every provider adapter against the simulator speaking that provider's wire format:
//! round trips (streamed and not), tool calls, reasoning, usage, each error class,
//! `drop_params`, framing quirks; then a job through the whole pipeline (real NATS,
//! Redis, Postgres) for each provider.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{read_events, wait_job, KEY};
use serde_json::{json, Value};
use sluice_core::config::Deployment;
use sluice_core::Config;
use sluice_schemas::openai::{ChatCompletionChunk, ChatRequest, Content};
use sluice_schemas::ErrorClass;
use sluice_testkit::sim::{self, Fault, SimConfig, SimHandle};
use sluice_testkit::{Stack, TestEnv};
use sluice_worker::providers::{CallOutput, ChunkSink, NoSink, ProviderError, Providers};

const SIM_KEY: &str = "sk-sim-provider-key-42";

/// One provider as a test sees it.
struct Case {
    name: &'static str,
    model: &'static str,
    /// `true`: `api_base` is the host; `false`: the OpenAI-style `/v1` base.
    host_base: bool,
    extra: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "openai",
        model: "openai/gpt-4o-mini",
        host_base: false,
        extra: "",
    },
    Case {
        name: "azure",
        model: "azure/my-gpt-4o",
        host_base: true,
        extra: ", api_version: '2024-10-21'",
    },
    Case {
        name: "anthropic",
        model: "anthropic/claude-sonnet-4-5",
        host_base: true,
        extra: "",
    },
    Case {
        name: "gemini",
        model: "gemini/gemini-2.5-flash",
        host_base: true,
        extra: "",
    },
    Case {
        name: "ollama",
        model: "ollama_chat/llama3.2",
        host_base: true,
        extra: "",
    },
];

fn params_yaml(c: &Case, sim: &SimHandle, key: &str, more: &str) -> String {
    let base = if c.host_base {
        sim.base()
    } else {
        sim.api_base()
    };
    format!(
        "{{model: {}, api_base: '{base}', api_key: {key}{}{more}}}",
        c.model, c.extra
    )
}

fn deployment(c: &Case, sim: &SimHandle, key: &str, more: &str) -> Deployment {
    let yaml = format!(
        "model_list:\n  - model_name: g\n    litellm_params: {}\n",
        params_yaml(c, sim, key, more)
    );
    Config::from_yaml(&yaml, None, &|_: &str| None)
        .expect("test config")
        .deployments
        .remove(0)
}

async fn sim_with(config: SimConfig) -> Result<SimHandle> {
    Ok(sim::start(
        "127.0.0.1:0",
        SimConfig {
            api_key: Some(SIM_KEY.into()),
            ..config
        },
    )
    .await?)
}

fn faulty(fault: Fault) -> SimConfig {
    SimConfig {
        fault: Some(fault),
        fail_first: u64::MAX,
        ..SimConfig::default()
    }
}

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).expect("test request")
}

fn hello() -> ChatRequest {
    request(json!({"model": "g", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something about rivers."}]}))
}

fn weather_tools() -> ChatRequest {
    request(json!({"model": "g",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}))
}

/// Collects streamed chunks.
#[derive(Default)]
struct Collect {
    chunks: Vec<ChatCompletionChunk>,
    raw: usize,
}

impl ChunkSink for Collect {
    async fn chunk(&mut self, chunk: &ChatCompletionChunk, raw: Option<bytes::Bytes>) {
        if raw.is_some() {
            self.raw += 1;
        }
        self.chunks.push(chunk.clone());
    }
}

impl Collect {
    fn content(&self) -> String {
        self.chunks
            .iter()
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.delta.content.as_deref())
            .collect()
    }
}

async fn call(
    d: &Deployment,
    mut r: ChatRequest,
    stream: bool,
) -> (Result<CallOutput, ProviderError>, Collect) {
    let providers = Providers::new();
    let mut sink = Collect::default();
    let out = if stream {
        providers.call(d, &mut r, true, &mut sink).await
    } else {
        providers.call(d, &mut r, false, &mut NoSink).await
    };
    (out, sink)
}

fn text(out: &CallOutput) -> String {
    match &out.completion().unwrap().choices[0].message.content {
        Some(Content::Text(t)) => t.clone(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn every_provider_round_trips_text_streamed_and_not() -> Result<()> {
    let sim = sim_with(SimConfig {
        chunks: 5,
        ..SimConfig::default()
    })
    .await?;
    for c in CASES {
        let d = deployment(c, &sim, SIM_KEY, "");
        let (whole, _) = call(&d, hello(), false).await;
        let whole = whole.map_err(|e| anyhow::anyhow!("{}: {e}", c.name))?;
        let (streamed, sink) = call(&d, hello(), true).await;
        let streamed = streamed.map_err(|e| anyhow::anyhow!("{}: {e}", c.name))?;

        assert_eq!(text(&whole).split(' ').count(), 5, "{}", c.name);
        assert_eq!(text(&whole), text(&streamed), "{}: deterministic", c.name);
        assert_eq!(sink.content(), text(&streamed), "{}: chunks add up", c.name);
        for out in [&whole, &streamed] {
            let ch = &out.completion().unwrap().choices[0];
            assert_eq!(ch.finish_reason.as_deref(), Some("stop"), "{}", c.name);
            let u = out.usage.unwrap_or_else(|| panic!("{}: usage", c.name));
            assert_eq!(u.completion_tokens, 5, "{}", c.name);
            assert!(u.prompt_tokens > 0, "{}", c.name);
            assert_eq!(u.total_tokens, u.prompt_tokens + 5, "{}", c.name);
            assert!(out.dropped_params.is_empty(), "{}", c.name);
        }
        assert!(streamed.ttft.is_some(), "{}", c.name);
        assert!(
            sink.chunks
                .iter()
                .all(|k| k.object == "chat.completion.chunk"),
            "{}",
            c.name
        );
        if matches!(c.name, "openai" | "azure") {
            assert!(sink.raw > 0, "{}: OpenAI chunks pass through raw", c.name);
        } else {
            assert_eq!(sink.raw, 0, "{}: re-encoded", c.name);
        }
        if matches!(c.name, "openai" | "anthropic") {
            let rl = streamed
                .rate_limits
                .unwrap_or_else(|| panic!("{}: rate limits", c.name));
            assert!(rl.limit_requests.is_some(), "{}", c.name);
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_provider_returns_tool_calls_streamed_and_not() -> Result<()> {
    let sim = sim_with(SimConfig::default()).await?;
    for c in CASES {
        let d = deployment(c, &sim, SIM_KEY, "");
        for stream in [false, true] {
            let (out, sink) = call(&d, weather_tools(), stream).await;
            let out = out.map_err(|e| anyhow::anyhow!("{} stream={stream}: {e}", c.name))?;
            let ch = &out.completion().unwrap().choices[0];
            assert_eq!(
                ch.finish_reason.as_deref(),
                Some("tool_calls"),
                "{} stream={stream}",
                c.name
            );
            let calls = ch.message.tool_calls.as_ref().expect("tool calls");
            assert_eq!(calls.len(), 1, "{}", c.name);
            assert_eq!(calls[0].function.name, "get_weather", "{}", c.name);
            assert!(!calls[0].id.is_empty(), "{}", c.name);
            let args: Value = serde_json::from_str(&calls[0].function.arguments)?;
            assert!(args["city"].is_string(), "{}: {args}", c.name);
            if stream {
                let deltas = sink
                    .chunks
                    .iter()
                    .flat_map(|k| &k.choices)
                    .filter(|ch| ch.delta.tool_calls.is_some())
                    .count();
                assert!(deltas >= 1, "{}: tool-call deltas streamed", c.name);
            }
        }
        // A tool result gets a text answer.
        let mut r = weather_tools();
        r.messages.push(serde_json::from_value(json!({"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}))?);
        r.messages.push(serde_json::from_value(
            json!({"role": "tool", "tool_call_id": "call_1", "content": "21C and sunny"}),
        )?);
        let (out, _) = call(&d, r, false).await;
        let out = out.map_err(|e| anyhow::anyhow!("{} tool result: {e}", c.name))?;
        assert_eq!(
            out.completion().unwrap().choices[0]
                .finish_reason
                .as_deref(),
            Some("stop"),
            "{}",
            c.name
        );
        assert!(!text(&out).is_empty(), "{}", c.name);
    }
    Ok(())
}

#[tokio::test]
async fn every_provider_returns_reasoning_as_reasoning_content() -> Result<()> {
    let sim = sim_with(SimConfig {
        chunks: 3,
        ..SimConfig::default()
    })
    .await?;
    for c in CASES {
        let d = deployment(c, &sim, SIM_KEY, "");
        for stream in [false, true] {
            let mut r = hello();
            r.reasoning_effort = Some("low".into());
            let (out, sink) = call(&d, r, stream).await;
            let out = out.map_err(|e| anyhow::anyhow!("{} stream={stream}: {e}", c.name))?;
            let m = &out.completion().unwrap().choices[0].message;
            let reasoning = m.reasoning_content.as_deref().unwrap_or_default();
            assert!(
                reasoning.starts_with("Considering"),
                "{} stream={stream}: {reasoning:?}",
                c.name
            );
            assert_eq!(text(&out).split(' ').count(), 3, "{}", c.name);
            let u = out.usage.expect("usage");
            assert_eq!(u.completion_tokens, 3 + 4, "{}: thinking counts", c.name);
            if matches!(c.name, "openai" | "azure" | "gemini") {
                assert_eq!(u.reasoning_tokens(), 4, "{}", c.name);
            }
            if stream {
                assert!(
                    sink.chunks
                        .iter()
                        .flat_map(|k| &k.choices)
                        .any(|ch| ch.delta.reasoning_content.is_some()),
                    "{}",
                    c.name
                );
            }
        }
    }
    // DeepSeek's reasoner: reasoning by model name, on the OpenAI-compatible surface.
    let d = deployment(
        &Case {
            name: "deepseek",
            model: "deepseek/deepseek-reasoner",
            host_base: false,
            extra: "",
        },
        &sim,
        SIM_KEY,
        "",
    );
    let (out, _) = call(&d, hello(), true).await;
    assert!(out?.completion().unwrap().choices[0]
        .message
        .reasoning_content
        .is_some());
    Ok(())
}

#[tokio::test]
async fn usage_details_and_omitted_usage() -> Result<()> {
    let sim = sim_with(SimConfig::default()).await?;
    let anthropic = deployment(&CASES[2], &sim, SIM_KEY, "");
    let (out, _) = call(&anthropic, hello(), true).await;
    let u = out?.usage.expect("usage");
    assert!(u.cached_tokens() > 0, "cache reads are reported");
    assert_eq!(u.cache_creation_tokens(), 0);
    assert!(
        u.prompt_tokens > u.cached_tokens(),
        "prompt includes cache reads"
    );

    let quiet = sim_with(faulty(Fault::NoUsage)).await?;
    for c in CASES {
        let d = deployment(c, &quiet, SIM_KEY, "");
        for stream in [false, true] {
            let (out, _) = call(&d, hello(), stream).await;
            let out = out.map_err(|e| anyhow::anyhow!("{} stream={stream}: {e}", c.name))?;
            assert!(out.usage.is_none(), "{} stream={stream}", c.name);
            assert!(!text(&out).is_empty(), "{}", c.name);
        }
    }
    Ok(())
}

/// Each fault, rendered in each provider's wording, lands in one class.
#[tokio::test]
async fn every_provider_classifies_each_error() -> Result<()> {
    use ErrorClass::*;
    // (fault, streamed?, expected class per provider in CASES order; None = not applicable)
    let matrix: &[(Fault, bool, [Option<ErrorClass>; 5])] = &[
        (Fault::RateLimit, false, [Some(RateLimit); 5]),
        (Fault::Server, true, [Some(Server); 5]),
        (Fault::Overloaded, false, [Some(Overloaded); 5]),
        (Fault::Overloaded529, true, [Some(Overloaded); 5]),
        (Fault::ContextWindow, false, [Some(ContextWindow); 5]),
        (
            Fault::ContentPolicy,
            false,
            [
                Some(ContentPolicy),
                Some(ContentPolicy),
                Some(ContentPolicy),
                Some(ContentPolicy),
                None,
            ],
        ),
        (
            Fault::ContentPolicy,
            true,
            [
                Some(ContentPolicy),
                Some(ContentPolicy),
                Some(ContentPolicy),
                Some(ContentPolicy),
                None,
            ],
        ),
        (Fault::Auth, false, [Some(Auth); 5]),
        (Fault::NotFound, false, [Some(NotFound); 5]),
        (Fault::Truncate, true, [Some(TruncatedStream); 5]),
        (Fault::Truncate, false, [Some(TruncatedStream); 5]),
        (Fault::Malformed, true, [Some(Server); 5]),
        (Fault::Malformed, false, [Some(Server); 5]),
        (
            Fault::ErrorMidStream,
            true,
            [
                Some(Server),
                Some(Server),
                Some(Overloaded),
                Some(Overloaded),
                Some(Server),
            ],
        ),
    ];
    for (fault, stream, expected) in matrix {
        let sim = sim_with(faulty(*fault)).await?;
        for (c, want) in CASES.iter().zip(expected) {
            let Some(want) = want else { continue };
            let d = deployment(c, &sim, SIM_KEY, "");
            let (out, _) = call(&d, hello(), *stream).await;
            let err = match out {
                Ok(_) => panic!("{} {fault:?} stream={stream}: succeeded", c.name),
                Err(e) => e,
            };
            assert_eq!(
                err.class, *want,
                "{} {fault:?} stream={stream}: {err}",
                c.name
            );
            if *fault == Fault::RateLimit {
                assert_eq!(
                    err.retry_after,
                    Some(Duration::from_secs(1)),
                    "{}: Retry-After / RetryInfo",
                    c.name
                );
            }
            assert!(
                !err.message.contains(SIM_KEY),
                "{}: no key in errors",
                c.name
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn wrong_key_hang_and_slow_first_token_are_classified() -> Result<()> {
    let sim = sim_with(SimConfig::default()).await?;
    for c in CASES {
        if c.name == "ollama" {
            continue; // local Ollama takes no key
        }
        let d = deployment(c, &sim, "sk-wrong", "");
        let (out, _) = call(&d, hello(), false).await;
        let err = out
            .err()
            .unwrap_or_else(|| panic!("{}: wrong key accepted", c.name));
        assert_eq!(err.class, ErrorClass::Auth, "{}: {err}", c.name);
    }
    let hang = sim_with(faulty(Fault::Hang)).await?;
    let slow = sim_with(SimConfig {
        ttft_ms: 5_000,
        ..SimConfig::default()
    })
    .await?;
    for c in CASES {
        let d = deployment(c, &hang, SIM_KEY, ", timeout: 0.3");
        let (out, _) = call(&d, hello(), false).await;
        assert_eq!(
            out.err().map(|e| e.class),
            Some(ErrorClass::Timeout),
            "{}",
            c.name
        );
        let d = deployment(c, &slow, SIM_KEY, ", stream_timeout: 0.3");
        let (out, _) = call(&d, hello(), true).await;
        assert_eq!(
            out.err().map(|e| e.class),
            Some(ErrorClass::Timeout),
            "{}",
            c.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn unsupported_params_fail_clearly_or_are_dropped_with_drop_params() -> Result<()> {
    let sim = sim_with(SimConfig::default()).await?;
    let anthropic = &CASES[2];
    let mut r = hello();
    r.seed = Some(42);
    let strict = deployment(anthropic, &sim, SIM_KEY, "");
    let (out, _) = call(&strict, r.clone(), false).await;
    let err = out.expect_err("seed is rejected");
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert!(
        err.message.contains("seed") && err.message.contains("drop_params"),
        "{err}"
    );
    assert_eq!(sim.requests(), 0, "nothing was sent");

    let lenient = deployment(anthropic, &sim, SIM_KEY, ", drop_params: true");
    let (out, _) = call(&lenient, r, false).await;
    let out = out?;
    assert_eq!(out.dropped_params, ["seed"]);
    let (_, body) = sim.last_request().expect("request");
    assert!(body.get("seed").is_none(), "{body}");
    Ok(())
}

#[tokio::test]
async fn requests_use_each_providers_paths_and_shapes() -> Result<()> {
    let sim = sim_with(SimConfig::default()).await?;
    let expect = [
        ("openai", "/v1/chat/completions"),
        (
            "azure",
            "/openai/deployments/my-gpt-4o/chat/completions?api-version=2024-10-21",
        ),
        ("anthropic", "/v1/messages"),
        (
            "gemini",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        ("ollama", "/api/chat"),
    ];
    for (c, (name, path)) in CASES.iter().zip(expect) {
        let d = deployment(c, &sim, SIM_KEY, "");
        let (out, _) = call(&d, hello(), true).await;
        out.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let (got, body) = sim.last_request().expect("request");
        assert_eq!(got, path, "{name}");
        match name {
            "openai" | "azure" => {
                assert_eq!(body["stream_options"]["include_usage"], true, "{name}");
                assert_eq!(body["messages"][0]["role"], "system");
            }
            "anthropic" => {
                assert_eq!(body["system"][0]["text"], "You are terse.");
                assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
            }
            "gemini" => {
                assert_eq!(
                    body["systemInstruction"]["parts"][0]["text"],
                    "You are terse."
                );
                assert_eq!(body["contents"][0]["role"], "user");
            }
            _ => assert_eq!(body["messages"][0]["role"], "system"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn crlf_framing_and_keepalive_comments_from_the_wire_parse() -> Result<()> {
    let sim = sim_with(SimConfig {
        crlf: true,
        keepalive: true,
        chunks: 4,
        ..SimConfig::default()
    })
    .await?;
    for c in CASES {
        let d = deployment(c, &sim, SIM_KEY, "");
        let (out, sink) = call(&d, weather_tools(), true).await;
        let out = out.map_err(|e| anyhow::anyhow!("{}: {e}", c.name))?;
        assert!(
            out.completion().unwrap().choices[0]
                .message
                .tool_calls
                .is_some(),
            "{}",
            c.name
        );
        let (out, sink2) = call(&d, hello(), true).await;
        let out = out.map_err(|e| anyhow::anyhow!("{}: {e}", c.name))?;
        assert_eq!(sink2.content(), text(&out), "{}", c.name);
        assert_eq!(text(&out).split(' ').count(), 4, "{}", c.name);
        drop(sink);
    }
    Ok(())
}

// ---- the whole pipeline ----

async fn submit(http: &reqwest::Client, api: &str, body: &Value) -> Result<String> {
    let r = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let v: Value = r.json().await?;
    anyhow::ensure!(status == 202, "submit: {status} {v}");
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_through_the_pipeline_on_every_provider() -> Result<()> {
    let sim = sim_with(SimConfig {
        chunks: 4,
        ..SimConfig::default()
    })
    .await?;
    let mut models = String::from("model_list:\n");
    for c in CASES {
        models.push_str(&format!(
            "  - model_name: {}\n    litellm_params: {}\n    model_info: {{id: {}-1}}\n",
            c.name,
            params_yaml(
                c,
                &sim,
                SIM_KEY,
                ", input_cost_per_token: 0.000001, output_cost_per_token: 0.000002"
            ),
            c.name
        ));
    }
    models.push_str(&format!("general_settings:\n  master_key: {KEY}\n"));
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models, "")?, 1).await?;
    let http = reqwest::Client::new();

    for c in CASES {
        // Streamed text: chunks on NATS add up to the recorded result.
        let id = submit(
            &http,
            &stack.api_url,
            &json!({"model": c.name, "stream": true,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rivers?"}]}),
        )
        .await?;
        let events = read_events(&env, &id).await?;
        let done = &events.last().expect("events").body;
        assert_eq!(done["status"], "succeeded", "{}: {done}", c.name);
        let streamed: String = events
            .iter()
            .filter(|e| e.kind == "chunk")
            .filter_map(|e| {
                e.body["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(streamed.split(' ').count(), 4, "{}", c.name);
        assert_eq!(
            done["result"]["choices"][0]["message"]["content"], streamed,
            "{}",
            c.name
        );
        let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
        assert_eq!(view["status"], "succeeded", "{}", c.name);
        let attempt = &view["attempt_log"][0];
        assert_eq!(attempt["deployment"], format!("{}-1", c.name));
        assert_eq!(
            attempt["usage_estimated"], false,
            "{}: provider usage",
            c.name
        );
        assert_eq!(attempt["completion_tokens"].as_u64(), Some(4), "{}", c.name);
        assert!(view["cost"].as_f64().is_some_and(|c| c > 0.0), "{}", c.name);

        // A non-streamed tool call.
        let id = submit(
            &http,
            &stack.api_url,
            &json!({"model": c.name, "messages": [{"role": "user", "content": "Weather in Paris?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}),
        )
        .await?;
        let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
        assert_eq!(view["status"], "succeeded", "{}: {view}", c.name);
        let choice = &view["result"]["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{}", c.name);
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["name"], "get_weather",
            "{}",
            c.name
        );
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_parameter_is_recorded_on_the_attempt() -> Result<()> {
    let sim = sim_with(SimConfig::default()).await?;
    let (openai, anthropic) = (&CASES[0], &CASES[2]);
    let models = format!(
        "model_list:\n  - model_name: lenient\n    litellm_params: {}\n  - model_name: plain\n    litellm_params: {}\ngeneral_settings:\n  master_key: {KEY}\n",
        params_yaml(anthropic, &sim, SIM_KEY, ", drop_params: true"),
        params_yaml(openai, &sim, SIM_KEY, ""),
    );
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models, "")?, 1).await?;
    let http = reqwest::Client::new();
    let body = |model: &str| json!({"model": model, "seed": 42, "messages": [{"role": "user", "content": "Rivers?"}]});
    let id = submit(&http, &stack.api_url, &body("lenient")).await?;
    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["attempt_log"][0]["dropped_params"], json!(["seed"]));
    // OpenAI takes `seed`: nothing dropped, nothing shown.
    let id = submit(&http, &stack.api_url, &body("plain")).await?;
    let view = wait_job(&http, &stack.api_url, &id, KEY).await?;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert!(
        view["attempt_log"][0].get("dropped_params").is_none(),
        "{view}"
    );
    stack.stop().await;
    Ok(())
}
