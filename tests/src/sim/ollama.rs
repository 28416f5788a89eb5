//! Ollama's native `/api/chat` as the simulator speaks it: `stream` defaults to true;
//! NDJSON lines with `message.content` / `message.thinking` fragments, whole `tool_calls`
//! with object arguments, a last `done:true` line with `done_reason` and the counters;
//! `{"error":"…"}` bodies (and lines, mid-stream). Ollama has no content-policy signal.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::plan::{text_chars, Plan, PlanInput};
use super::{json_error, stream, whole, Fault, Frames, Sim};

fn error(status: u16, message: &str) -> Response {
    json_error(status, json!({ "error": message }), &[])
}

pub(super) async fn chat(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/api/chat".to_string();
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            sim.begin(path, &headers, &Value::Null, true);
            return error(400, &format!("invalid character in JSON: {e}"));
        }
    };
    let stream_on = req["stream"].as_bool().unwrap_or(true);
    let script = sim.begin(path, &headers, &req, stream_on);
    let model = req["model"].as_str().unwrap_or("").to_string();
    if model.is_empty() {
        return error(400, "model is required");
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    match script.fault {
        Some(Fault::RateLimit) => {
            return json_error(
                429,
                json!({"error": "too many requests"}),
                &[("retry-after", "1")],
            )
        }
        Some(Fault::Server) => {
            return error(500, "llama runner process has terminated: exit status 2")
        }
        Some(Fault::Overloaded) => {
            return error(
                503,
                "server busy, please try again.  maximum pending requests exceeded",
            )
        }
        Some(Fault::Overloaded529) => return error(529, "server busy, please try again."),
        Some(Fault::Auth) => return error(401, "unauthorized"),
        Some(Fault::NotFound) => {
            return error(
                404,
                &format!("model \"{model}\" not found, try pulling it first"),
            )
        }
        Some(Fault::ContextWindow) => {
            return error(400, "the input length exceeds the context length")
        }
        Some(Fault::Hang) => futures::future::pending::<()>().await,
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
    let think = &req["think"];
    let plan = Plan::new(
        &PlanInput {
            conversation: &Value::Array(messages.clone()),
            seed: req["options"]["seed"].as_i64(),
            model: &model,
            cap: req["options"]["num_predict"].as_u64().map(|v| v as u32),
            tool,
            tools_off: false,
            after_tool_result: messages.last().is_some_and(|m| m["role"] == "tool"),
            wants_reasoning: think == &Value::Bool(true) || think.is_string(),
            prompt_chars: messages.iter().map(|m| text_chars(&m["content"])).sum(),
            prompt_messages: messages.len(),
        },
        script.chunks,
    );
    let created_at = "2026-01-01T00:00:00.000000Z";
    let done_reason = if plan.length { "length" } else { "stop" };
    let done = |message: Value| {
        let mut d = json!({"model": model, "created_at": created_at, "message": message,
            "done": true, "done_reason": done_reason, "total_duration": 4883583458u64,
            "load_duration": 1334875, "prompt_eval_duration": 342546000, "eval_duration": 4535599000u64});
        if script.usage {
            d["prompt_eval_count"] = json!(plan.prompt_tokens);
            d["eval_count"] = json!(plan.completion_tokens());
        }
        d
    };
    let calls = plan
        .tool
        .as_ref()
        .map(|(name, args)| json!([{"function": {"name": name, "arguments": args}}]));

    if !stream_on {
        let mut message = json!({"role": "assistant", "content": if calls.is_some() { String::new() } else { plan.text() }});
        if !plan.reasoning.is_empty() {
            message["thinking"] = json!(plan.reasoning_text());
        }
        if let Some(c) = calls {
            message["tool_calls"] = c;
        }
        return whole(&script, done(message), &[]).await;
    }

    let line = |message: Value| {
        format!(
            "{}\n",
            json!({"model": model, "created_at": created_at, "message": message, "done": false})
        )
    };
    let mut frames = Vec::new();
    for r in &plan.reasoning {
        frames.push(line(
            json!({"role": "assistant", "content": "", "thinking": r}),
        ));
    }
    let content_start = frames.len();
    match calls {
        Some(c) => frames.push(line(
            json!({"role": "assistant", "content": "", "tool_calls": c}),
        )),
        None => {
            for w in &plan.words {
                frames.push(line(json!({"role": "assistant", "content": w})));
            }
        }
    }
    let mid = content_start + (frames.len() - content_start) / 2;
    frames.push(format!(
        "{}\n",
        done(json!({"role": "assistant", "content": ""}))
    ));
    stream(
        script,
        Frames {
            frames,
            mid,
            error: format!(
                "{}\n",
                json!({"error": "an error was encountered while running the model: unexpected EOF"})
            ),
            malformed: "{\"model\":\"m\",\"message\":{\"role\":\n".into(),
            content_type: "application/x-ndjson",
            sse: false,
        },
        &[],
    )
}
