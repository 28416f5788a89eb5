//! The Gemini API as the simulator speaks it: `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse`, `x-goog-api-key`, `contents` with `user`/`model`
//! roles; whole `GenerateContentResponse`s (also one per SSE event, no terminator: the
//! stream closes after the chunk with `finishReason`), `thought` parts, whole
//! `functionCall` parts, cumulative `usageMetadata`; errors in Google's RPC shape with
//! `RetryInfo`, prompt blocks as `promptFeedback.blockReason`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::plan::{text_chars, Plan, PlanInput};
use super::{header_str, json_error, stream, whole, Fault, Frames, Sim};

fn error(code: u16, status: &str, message: &str, details: Value) -> Response {
    json_error(
        code,
        json!({"error": {"code": code, "message": message, "status": status, "details": details}}),
        &[],
    )
}

pub(super) async fn generate(
    State(sim): State<Arc<Sim>>,
    Path(call): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = match q.get("alt") {
        Some(alt) => format!("/v1beta/models/{call}?alt={alt}"),
        None => format!("/v1beta/models/{call}"),
    };
    let (model, method) = call.split_once(':').unwrap_or((call.as_str(), ""));
    let model = model.to_string();
    let stream_on = match method {
        "embedContent" | "batchEmbedContents" => {
            return super::embeddings::gemini(&sim, path, &headers, &body, method)
        }
        "generateContent" => false,
        "streamGenerateContent" if q.get("alt").map(String::as_str) == Some("sse") => true,
        _ => {
            sim.begin(path, &headers, &Value::Null, false);
            return error(404, "NOT_FOUND", &format!("method {method:?} is not served here (the simulator streams only with alt=sse)"), json!([]));
        }
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            sim.begin(path, &headers, &Value::Null, stream_on);
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid JSON payload received. {e}"),
                json!([]),
            );
        }
    };
    let script = sim.begin(path, &headers, &req, stream_on);
    if !sim.key_ok(header_str(&headers, "x-goog-api-key")) {
        return error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]),
        );
    }
    let contents = req["contents"].as_array().cloned().unwrap_or_default();
    if contents.is_empty() {
        return error(
            400,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
            json!([]),
        );
    }
    if let Some(bad) = contents
        .iter()
        .find(|c| c["role"] != "user" && c["role"] != "model")
    {
        return error(
            400,
            "INVALID_ARGUMENT",
            &format!("Please use a valid role: user, model. Got {}", bad["role"]),
            json!([]),
        );
    }
    match script.fault {
        Some(Fault::RateLimit) => {
            return error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details. Please retry in 1.5s.",
                json!([
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
                ]),
            )
        }
        Some(Fault::Server) => return error(500, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", json!([])),
        Some(Fault::Overloaded) => return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", json!([])),
        Some(Fault::Overloaded529) => return error(529, "UNAVAILABLE", "The model is overloaded. Please try again later.", json!([])),
        Some(Fault::Auth) => return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers. Please use API Key or other form of API consumer identity to call this API.", json!([])),
        Some(Fault::NotFound) => return error(404, "NOT_FOUND", &format!("models/{model} is not found for API version v1beta, or is not supported for generateContent."), json!([])),
        Some(Fault::ContextWindow) => return error(400, "INVALID_ARGUMENT", "The input token count (3475108) exceeds the maximum number of tokens allowed (1048576).", json!([])),
        Some(Fault::Hang) => futures::future::pending::<()>().await,
        _ => {}
    }

    let tool = req["tools"][0]["functionDeclarations"][0]
        .as_object()
        .map(|f| {
            (
                f.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("tool")
                    .to_string(),
                f.get("parameters").cloned().unwrap_or(Value::Null),
            )
        });
    let last_is_result = contents.last().is_some_and(|c| {
        c["parts"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.get("functionResponse").is_some()))
    });
    let gen = &req["generationConfig"];
    let thinking = &gen["thinkingConfig"];
    let conversation = json!({"system": req["systemInstruction"], "contents": contents});
    let plan = Plan::new(
        &PlanInput {
            conversation: &conversation,
            seed: gen["seed"].as_i64(),
            model: &model,
            cap: gen["maxOutputTokens"].as_u64().map(|v| v as u32),
            tool,
            tools_off: req["toolConfig"]["functionCallingConfig"]["mode"] == "NONE",
            after_tool_result: last_is_result,
            wants_reasoning: thinking["includeThoughts"] == true,
            prompt_chars: text_chars(&conversation),
            prompt_messages: contents.len(),
        },
        script.chunks,
    );
    let response_id = format!(
        "sim{}",
        sim.stats.requests.load(std::sync::atomic::Ordering::SeqCst)
    );
    let finish = if plan.length { "MAX_TOKENS" } else { "STOP" };
    let completion = plan.words.len() as u64 + if plan.tool.is_some() { 5 } else { 0 };
    let usage = |completion: u64| {
        let mut u = json!({"promptTokenCount": plan.prompt_tokens, "candidatesTokenCount": completion,
            "totalTokenCount": plan.prompt_tokens + completion + plan.reasoning_tokens(),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}]});
        if plan.reasoning_tokens() > 0 {
            u["thoughtsTokenCount"] = json!(plan.reasoning_tokens());
        }
        u
    };
    let envelope = |parts: Value, finish: Option<&str>, completion: u64| {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        let mut r = json!({"candidates": [cand], "modelVersion": model, "responseId": response_id});
        if script.usage {
            r["usageMetadata"] = usage(completion);
        }
        r
    };

    if script.fault == Some(Fault::ContentPolicy) {
        let mut blocked = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]},
            "modelVersion": model, "responseId": response_id});
        if script.usage {
            blocked["usageMetadata"] = json!({"promptTokenCount": plan.prompt_tokens, "totalTokenCount": plan.prompt_tokens});
        }
        if !stream_on {
            return whole(&script, blocked, &[]).await;
        }
        return stream(
            script,
            Frames {
                frames: vec![format!("data: {blocked}\n\n")],
                mid: usize::MAX,
                error: String::new(),
                malformed: String::new(),
                content_type: "text/event-stream",
                sse: true,
            },
            &[],
        );
    }

    let thought_parts: Vec<Value> = plan
        .reasoning
        .iter()
        .map(|r| json!({"text": r, "thought": true}))
        .collect();
    let call_part = plan
        .tool
        .as_ref()
        .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": "c2lt"}));

    if !stream_on {
        let mut parts = thought_parts;
        match call_part {
            Some(p) => parts.push(p),
            None => parts.push(json!({"text": plan.text()})),
        }
        let body = envelope(Value::Array(parts), Some(finish), completion);
        return whole(&script, body, &[]).await;
    }

    let frame = |v: Value| format!("data: {v}\n\n");
    let mut frames = Vec::new();
    if !thought_parts.is_empty() {
        frames.push(frame(envelope(Value::Array(thought_parts), None, 0)));
    }
    let content_start = frames.len();
    match call_part {
        Some(p) => frames.push(frame(envelope(json!([p]), Some(finish), completion))),
        None => {
            let n = plan.words.len();
            for (i, w) in plan.words.iter().enumerate() {
                let last = i + 1 == n;
                frames.push(frame(envelope(
                    json!([{"text": w}]),
                    last.then_some(finish),
                    i as u64 + 1,
                )));
            }
        }
    }
    let mid = content_start + (frames.len() - content_start) / 2;
    stream(
        script,
        Frames {
            frames,
            mid,
            error: frame(
                json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}),
            ),
            malformed: "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \n\n".into(),
            content_type: "text/event-stream",
            sse: true,
        },
        &[],
    )
}
