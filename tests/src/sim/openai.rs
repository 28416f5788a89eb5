//! OpenAI Chat Completions (and Azure's deployment routes) as the simulator speaks them:
//! `chat.completion` bodies, SSE chunks with `include_usage`, `data: [DONE]`, the OpenAI
//! error envelope, `x-ratelimit-*` headers; Azure adds a prompt-filter chunk first, wants
//! `api-version` and the `api-key` header, and words its errors its own way.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::plan::{text_chars, Plan, PlanInput};
use super::{header_str, json_error, now, stream, whole, Fault, Frames, Sim};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Azure,
}

pub(super) async fn chat(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = header_str(&headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    let key_ok = sim.key_ok(key);
    handle(
        &sim,
        Flavor::OpenAi,
        "/v1/chat/completions".into(),
        &headers,
        &body,
        key_ok,
        None,
    )
    .await
}

pub(super) async fn azure_deployment(
    State(sim): State<Arc<Sim>>,
    Path(deployment): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!(
        "/openai/deployments/{deployment}/chat/completions?api-version={}",
        q.get("api-version").map(String::as_str).unwrap_or("")
    );
    let key_ok = sim.key_ok(header_str(&headers, "api-key"));
    if !q.contains_key("api-version") {
        return json_error(
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}}),
            &[],
        );
    }
    handle(
        &sim,
        Flavor::Azure,
        path,
        &headers,
        &body,
        key_ok,
        Some(deployment),
    )
    .await
}

pub(super) async fn azure_v1(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key_ok = sim.key_ok(header_str(&headers, "api-key"));
    handle(
        &sim,
        Flavor::Azure,
        "/openai/v1/chat/completions".into(),
        &headers,
        &body,
        key_ok,
        None,
    )
    .await
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Response {
    json_error(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        &[],
    )
}

fn limits() -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit-requests", "500".into()),
        ("x-ratelimit-remaining-requests", "499".into()),
        ("x-ratelimit-reset-requests", "120ms".into()),
        ("x-ratelimit-limit-tokens", "30000".into()),
        ("x-ratelimit-remaining-tokens", "29000".into()),
        ("x-ratelimit-reset-tokens", "2s".into()),
    ]
}

async fn handle(
    sim: &Sim,
    flavor: Flavor,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    key_ok: bool,
    deployment: Option<String>,
) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            sim.begin(path, headers, &Value::Null, false);
            return error(
                400,
                "invalid_request_error",
                "invalid_json",
                &format!("bad request body: {e}"),
            );
        }
    };
    let stream_on = req["stream"].as_bool().unwrap_or(false);
    let script = sim.begin(path, headers, &req, stream_on);
    if !key_ok {
        return error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        );
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        return error(
            400,
            "invalid_request_error",
            "missing_messages",
            "messages is required",
        );
    }
    let model = deployment.unwrap_or_else(|| req["model"].as_str().unwrap_or("sim").to_string());
    match script.fault {
        Some(Fault::RateLimit) => {
            let mut h: Vec<(&'static str, String)> = limits();
            h.push(("retry-after", "1".into()));
            h.push(("x-ratelimit-remaining-requests", "0".into()));
            let body = match flavor {
                Flavor::OpenAi => json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                Flavor::Azure => json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."}}),
            };
            let h: Vec<(&'static str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            return json_error(429, body, &h);
        }
        Some(Fault::Server) => return error(500, "server_error", "internal_error", "The server had an error while processing your request."),
        Some(Fault::Overloaded) => return error(503, "server_error", "server_is_overloaded", "The server is overloaded"),
        Some(Fault::Overloaded529) => return error(529, "server_error", "overloaded", "Overloaded"),
        Some(Fault::Auth) => return error(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
        Some(Fault::NotFound) => {
            return match flavor {
                Flavor::OpenAi => error(404, "invalid_request_error", "model_not_found", &format!("The model `{model}` does not exist")),
                Flavor::Azure => json_error(404, json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}), &[]),
            }
        }
        Some(Fault::ContextWindow) => {
            return error(
                400,
                "invalid_request_error",
                "context_length_exceeded",
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            )
        }
        Some(Fault::ContentPolicy) if flavor == Flavor::Azure => {
            return json_error(
                400,
                json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.", "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"jailbreak": {"detected": true, "filtered": true}}}}}),
                &[],
            )
        }
        Some(Fault::Hang) => futures::future::pending::<()>().await,
        Some(Fault::HugeRetryAfter) => {
            let h = [
                ("retry-after", "1e300"),
                ("retry-after-ms", "1e300"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "99999999999999h"),
                ("x-ratelimit-reset-tokens", "99999999999999h"),
            ];
            return json_error(
                429,
                json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                &h,
            );
        }
        Some(Fault::Redirect) => {
            let target = sim.config.redirect_to.clone().unwrap_or_else(|| "http://127.0.0.1:9".into());
            let location = format!("{}/v1/chat/completions", target.trim_end_matches('/'));
            return json_error(307, json!({"error": {"message": "moved"}}), &[("location", location.as_str())]);
        }
        _ => {}
    }

    let tool = req["tools"][0]["function"].as_object().map(|f| {
        (
            f.get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string(),
            f.get("parameters").cloned().unwrap_or(Value::Null),
        )
    });
    let conversation = Value::Array(messages.clone());
    let plan = Plan::new(
        &PlanInput {
            conversation: &conversation,
            seed: req["seed"].as_i64(),
            model: &model,
            cap: req["max_completion_tokens"]
                .as_u64()
                .or(req["max_tokens"].as_u64())
                .map(|v| v as u32),
            tool,
            tools_off: req["tool_choice"] == "none",
            after_tool_result: messages.last().is_some_and(|m| m["role"] == "tool"),
            wants_reasoning: req.get("reasoning_effort").is_some_and(|v| v != "none"),
            prompt_chars: messages.iter().map(|m| text_chars(&m["content"])).sum(),
            prompt_messages: messages.len(),
        },
        script.chunks,
    );
    let mut plan = plan;
    match script.fault {
        Some(Fault::NulContent) => plan.words.insert(0, "nul\u{0000}in\u{0000}text ".into()),
        Some(Fault::LargeAnswer) => plan.words = vec!["0123456789".repeat(150_000)],
        _ => {}
    }
    let index: u64 = if script.fault == Some(Fault::HugeIndex) {
        u64::from(u32::MAX)
    } else {
        0
    };
    let refuse = script.fault == Some(Fault::ContentPolicy);
    let id = format!(
        "chatcmpl-sim{}",
        sim.stats.requests.load(std::sync::atomic::Ordering::SeqCst)
    );
    let created = now();
    let usage = json!({
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens(),
        "total_tokens": plan.prompt_tokens + plan.completion_tokens(),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": plan.reasoning_tokens(), "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    });
    let finish = if refuse {
        "content_filter"
    } else if plan.tool.is_some() {
        "tool_calls"
    } else if plan.length {
        "length"
    } else {
        "stop"
    };
    let call_id = format!("call_{id}_0");

    if !stream_on {
        let mut message = json!({"role": "assistant", "content": plan.text(), "refusal": null});
        if refuse {
            message =
                json!({"role": "assistant", "content": null, "refusal": "I can't help with that."});
        }
        if !plan.reasoning.is_empty() {
            message["reasoning_content"] = Value::String(plan.reasoning_text());
        }
        if let (Some((name, _)), Some((args, _, _))) = (&plan.tool, plan.tool_arguments()) {
            message["content"] = Value::Null;
            message["tool_calls"] = json!([{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]);
        }
        let mut body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": null, "message": message}],
        });
        if flavor == Flavor::Azure {
            body["prompt_filter_results"] =
                json!([{"prompt_index": 0, "content_filter_results": {}}]);
        }
        if script.usage {
            body["usage"] = usage;
        }
        return whole(&script, body, &limits()).await;
    }

    let include_usage = script.usage
        && req["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
    let frame = |v: Value| format!("data: {v}\n\n");
    let chunk = |delta: Value, finish: Option<&str>| {
        frame(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": "fp_sim",
               "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
               "usage": null}),
        )
    };
    let mut frames = Vec::new();
    if flavor == Flavor::Azure {
        frames.push(frame(json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}]})));
    }
    frames.push(chunk(json!({"role": "assistant", "content": ""}), None));
    for r in &plan.reasoning {
        frames.push(chunk(json!({"reasoning_content": r}), None));
    }
    let content_start = frames.len();
    if refuse {
        frames.push(chunk(json!({"refusal": "I can't help with that."}), None));
    } else if let (Some((name, _)), Some((_, a, b))) = (&plan.tool, plan.tool_arguments()) {
        frames.push(chunk(json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
        frames.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
            None,
        ));
        frames.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            None,
        ));
    } else {
        for w in &plan.words {
            frames.push(chunk(json!({"content": w}), None));
        }
    }
    let mid = content_start + (frames.len() - content_start) / 2;
    frames.push(chunk(json!({}), Some(finish)));
    if include_usage {
        frames.push(frame(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage}),
        ));
    }
    frames.push("data: [DONE]\n\n".into());
    stream(
        script,
        Frames {
            frames,
            mid,
            error: frame(
                json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
            ),
            malformed: "data: {\"id\": \"chatcmpl-broken\", \"choices\": [\n\n".into(),
            content_type: "text/event-stream",
            sse: true,
        },
        &limits(),
    )
}
