//! The Anthropic Messages API as the simulator speaks it: `x-api-key` and
//! `anthropic-version` required, `max_tokens` required, no `system` role in `messages`;
//! `message` bodies with content blocks (thinking, text, tool_use); named SSE events from
//! `message_start` to `message_stop` with `ping`s; `{"type":"error",…}` errors, 529
//! `overloaded_error`, `anthropic-ratelimit-*` headers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::plan::{text_chars, Plan, PlanInput};
use super::{header_str, json_error, stream, whole, Fault, Frames, Sim};

fn error(status: u16, kind: &str, message: &str) -> Response {
    json_error(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_sim"}),
        &[("request-id", "req_sim")],
    )
}

/// With thinking on, the assistant turn answered by the last tool results must start
/// with the thinking block it was given, signed as this simulator signs (`sig_sim`); the
/// API's error when it does not.
fn unsigned_thinking_turn(req: &Value, messages: &[Value]) -> Option<String> {
    if req["thinking"]["type"] != "enabled" {
        return None;
    }
    let answers_tools = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
    });
    let (i, turn) = messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m["role"] == "assistant")
        .filter(|_| answers_tools)?;
    let first = &turn["content"][0];
    match first["type"].as_str() {
        Some("thinking") if first["signature"] == "sig_sim" => None,
        Some("thinking") => Some(format!("messages.{i}.content.0: Invalid `signature` in `thinking` block")),
        Some("redacted_thinking") => None,
        other => Some(format!(
            "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks).",
            other.unwrap_or("nothing")
        )),
    }
}

fn limits(remaining: u64) -> Vec<(&'static str, String)> {
    let reset = reset_in(30);
    vec![
        ("request-id", "req_sim".into()),
        ("anthropic-ratelimit-requests-limit", "50".into()),
        (
            "anthropic-ratelimit-requests-remaining",
            remaining.to_string(),
        ),
        ("anthropic-ratelimit-requests-reset", reset.clone()),
        ("anthropic-ratelimit-tokens-limit", "40000".into()),
        ("anthropic-ratelimit-tokens-remaining", "39000".into()),
        ("anthropic-ratelimit-tokens-reset", reset),
    ]
}

/// An RFC 3339 UTC timestamp `secs` from now.
fn reset_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) async fn messages(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "/v1/messages".to_string();
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            sim.begin(path, &headers, &Value::Null, false);
            return error(
                400,
                "invalid_request_error",
                &format!("invalid JSON body: {e}"),
            );
        }
    };
    let stream_on = req["stream"].as_bool().unwrap_or(false);
    let script = sim.begin(path, &headers, &req, stream_on);
    if !sim.key_ok(header_str(&headers, "x-api-key")) {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if header_str(&headers, "anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    if !req["max_tokens"].is_u64() {
        return error(400, "invalid_request_error", "max_tokens: Field required");
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        return error(
            400,
            "invalid_request_error",
            "messages: at least one message is required",
        );
    }
    if let Some(bad) = messages
        .iter()
        .find(|m| m["role"] != "user" && m["role"] != "assistant")
    {
        return error(
            400,
            "invalid_request_error",
            &format!("messages: Unexpected role {}. Use the top-level `system` parameter for a system prompt", bad["role"]),
        );
    }
    if let Some(message) = unsigned_thinking_turn(&req, &messages) {
        return error(400, "invalid_request_error", &message);
    }
    match script.fault {
        Some(Fault::RateLimit) => {
            let mut h = limits(0);
            h.push(("retry-after", "1".into()));
            let h: Vec<(&'static str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            return json_error(
                429,
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed the rate limit for your organization of 50 requests per minute."}}),
                &h,
            );
        }
        Some(Fault::Server) => return error(500, "api_error", "Internal server error"),
        Some(Fault::Overloaded) | Some(Fault::Overloaded529) => {
            return error(529, "overloaded_error", "Overloaded")
        }
        Some(Fault::Auth) => return error(401, "authentication_error", "invalid x-api-key"),
        Some(Fault::NotFound) => {
            return error(404, "not_found_error", &format!("model: {}", req["model"]))
        }
        Some(Fault::ContextWindow) => {
            return error(
                400,
                "invalid_request_error",
                "prompt is too long: 205351 tokens > 200000 maximum",
            )
        }
        Some(Fault::Hang) => futures::future::pending::<()>().await,
        _ => {}
    }

    let model = req["model"].as_str().unwrap_or("claude-sim").to_string();
    let tool = req["tools"][0].as_object().map(|t| {
        (
            t.get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string(),
            t.get("input_schema").cloned().unwrap_or(Value::Null),
        )
    });
    let last_is_result = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
    });
    let conversation = json!({"system": req["system"], "messages": messages});
    let plan = Plan::new(
        &PlanInput {
            conversation: &conversation,
            seed: None,
            model: &model,
            cap: req["max_tokens"].as_u64().map(|v| v as u32),
            tool,
            tools_off: req["tool_choice"]["type"] == "none",
            after_tool_result: last_is_result,
            wants_reasoning: req["thinking"]["type"] == "enabled",
            prompt_chars: text_chars(&req["system"])
                + messages
                    .iter()
                    .map(|m| text_chars(&m["content"]))
                    .sum::<usize>(),
            prompt_messages: messages.len() + usize::from(!req["system"].is_null()),
        },
        script.chunks,
    );
    let refuse = script.fault == Some(Fault::ContentPolicy);
    let n = sim.stats.requests.load(std::sync::atomic::Ordering::SeqCst);
    let id = format!("msg_sim{n}");
    let tool_id = format!("toolu_sim{n}");
    let stop = if refuse {
        "refusal"
    } else if plan.tool.is_some() {
        "tool_use"
    } else if plan.length {
        "max_tokens"
    } else {
        "end_turn"
    };
    // A fifth of the prompt is served from the cache, to exercise cache accounting.
    let cached = plan.prompt_tokens / 5;
    let usage = json!({"input_tokens": plan.prompt_tokens - cached, "output_tokens": plan.completion_tokens(),
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "service_tier": "standard"});

    if !stream_on {
        let mut content = Vec::new();
        if !plan.reasoning.is_empty() {
            content.push(json!({"type": "thinking", "thinking": plan.reasoning_text(), "signature": "sig_sim"}));
        }
        if refuse {
        } else if let Some((name, args)) = &plan.tool {
            content.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": args}));
        } else {
            content.push(json!({"type": "text", "text": plan.text()}));
        }
        let mut body = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null});
        if refuse {
            body["stop_details"] =
                json!({"type": "refusal", "category": "cyber", "explanation": "simulated refusal"});
        }
        if script.usage {
            body["usage"] = usage;
        }
        return whole(&script, body, &limits(49)).await;
    }

    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut start_usage = json!({"input_tokens": plan.prompt_tokens - cached, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached, "output_tokens": 1});
    if !script.usage {
        start_usage = Value::Null;
    }
    let mut message = json!({"id": id, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": null, "stop_sequence": null});
    if script.usage {
        message["usage"] = start_usage;
    }
    let mut frames = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": message}),
    )];
    let mut index = 0;
    if !plan.reasoning.is_empty() {
        frames.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
        for r in &plan.reasoning {
            frames.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": r}})));
        }
        frames.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": "sig_sim"}})));
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    let content_start = frames.len();
    if refuse {
    } else if let (Some((name, _)), Some((_, a, b))) = (&plan.tool, plan.tool_arguments()) {
        frames.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}})));
        for piece in ["", a.as_str(), b.as_str()] {
            frames.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})));
        }
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    } else {
        frames.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        for (i, w) in plan.words.iter().enumerate() {
            if i == 1 {
                frames.push(ev("ping", json!({"type": "ping"})));
            }
            frames.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": w}})));
        }
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let mid = content_start + (frames.len() - content_start) / 2;
    let mut delta =
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}});
    if script.usage {
        delta["usage"] = json!({"output_tokens": plan.completion_tokens()});
    }
    frames.push(ev("message_delta", delta));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    stream(
        script,
        Frames {
            frames,
            mid,
            error: ev(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
            malformed:
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":\n\n"
                    .into(),
            content_type: "text/event-stream; charset=utf-8",
            sse: true,
        },
        &limits(49),
    )
}
