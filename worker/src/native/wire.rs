//! The four batch APIs on the wire:
//!
//! | API | submit | poll | results | cancel |
//! |---|---|---|---|---|
//! | OpenAI | `POST {base}/files` (multipart, `purpose=batch`), `POST {base}/batches` | `GET {base}/batches/{id}` | `GET {base}/files/{output,error}/content` | `POST {base}/batches/{id}/cancel` |
//! | Azure | the same under `{resource}/openai/v1`, `api-key` header | | | |
//! | Anthropic | `POST /v1/messages/batches` | `GET /v1/messages/batches/{id}` | `GET …/{id}/results` | `POST …/{id}/cancel` |
//! | Gemini | `POST v1beta/models/{m}:batchGenerateContent` (inline requests) | `GET v1beta/batches/{id}` | the operation's inlined responses | `POST v1beta/batches/{id}:cancel` |
//!
//! Provider bytes are hostile: ids that go back into a URL are checked first, result
//! lines that do not parse are skipped (their lines stay unfinished), and Anthropic's
//! `results_url` is never followed (the results path is built from the configured base).

use bytes::Bytes;
use serde_json::{json, Value};
use sluice_core::config::Deployment;
use sluice_core::native_batches::{LostCreate, NativeError, Submitted, UpstreamEnd, UpstreamPoll};
use sluice_schemas::ErrorClass;

use super::Api;
use crate::providers;

/// The `metadata` key that carries Sluice's marker on OpenAI and Azure batches.
const MARKER_KEY: &str = "sluice_batch";
/// Anthropic's API version header.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Largest result body read (an OpenAI output file is at most 200 MB of requests' answers).
const MAX_RESULT_BYTES: usize = 1024 * 1024 * 1024;

/// One result line before the protocol adapter reads it.
pub(crate) enum RawOutcome {
    /// The answer body, as a live call would have received it.
    Body(Vec<u8>),
    /// An HTTP error status and body.
    Http(u16, String),
    Error(ErrorClass, String),
}

pub(crate) struct RawResult {
    pub custom_id: String,
    pub outcome: RawOutcome,
}

/// A line of the upstream batch, wrapping the request `body`.
pub(crate) fn line(api: Api, _d: &Deployment, custom_id: &str, body: Value) -> Value {
    match api {
        Api::OpenAi | Api::Azure => json!({
            "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body,
        }),
        Api::Anthropic => json!({"custom_id": custom_id, "params": body}),
        Api::Gemini => json!({"request": body, "metadata": {"key": custom_id}}),
    }
}

/// OpenAI's `{base}` (with `/v1`); Azure's v1 root, `{resource}/openai/v1`.
fn openai_base(api: Api, d: &Deployment) -> String {
    let base = d.api_base.trim_end_matches('/');
    if api == Api::OpenAi || base.ends_with("/openai/v1") {
        return base.to_string();
    }
    let resource = base.split("/openai/").next().unwrap_or(base);
    format!("{resource}/openai/v1")
}

/// Gemini's versioned root (`…/v1beta`).
fn gemini_root(d: &Deployment) -> String {
    let base = d.api_base.trim_end_matches('/');
    if base.ends_with("/v1beta") || base.ends_with("/v1") {
        base.to_string()
    } else {
        format!("{base}/v1beta")
    }
}

fn anthropic_base(d: &Deployment) -> String {
    format!("{}/v1/messages/batches", d.api_base.trim_end_matches('/'))
}

fn auth(api: Api, d: &Deployment, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let Some(key) = &d.api_key else {
        return match api {
            Api::Anthropic => req.header("anthropic-version", ANTHROPIC_VERSION),
            _ => req,
        };
    };
    match api {
        Api::OpenAi => req.bearer_auth(key.expose()),
        Api::Azure => req.header("api-key", key.expose()),
        Api::Anthropic => req
            .header("x-api-key", key.expose())
            .header("anthropic-version", ANTHROPIC_VERSION),
        Api::Gemini => req.header("x-goog-api-key", key.expose()),
    }
}

/// An id the provider gave, checked before it goes into a URL path.
fn safe_id(id: &str) -> Result<&str, NativeError> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(id)
    } else {
        Err(NativeError::new(
            ErrorClass::Server,
            "the provider returned an id Sluice will not use in a URL",
        ))
    }
}

/// Sends `req`; a non-2xx answer is classified in the protocol's terms.
async fn send(
    d: &Deployment,
    api: Api,
    req: reqwest::RequestBuilder,
) -> Result<Bytes, NativeError> {
    let resp = auth(api, d, req).send().await.map_err(|e| {
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else {
            ErrorClass::Connection
        };
        NativeError::new(
            class,
            format!("batch API of {} unreachable: {}", d.id, e.without_url()),
        )
    })?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if let Some(len) = resp.content_length() {
        if len > MAX_RESULT_BYTES as u64 {
            return Err(NativeError::new(
                ErrorClass::Server,
                format!("batch API answer of {len} bytes is too large"),
            ));
        }
    }
    let body = resp.bytes().await.map_err(|e| {
        NativeError::new(
            ErrorClass::Connection,
            format!("batch API answer cut off: {}", e.without_url()),
        )
    })?;
    if !(200..300).contains(&status) {
        let e = providers::classify(d, status, &headers, &String::from_utf8_lossy(&body));
        return Err(NativeError::new(
            e.class,
            format!("batch API of {} answered {status}: {}", d.id, e.message),
        ));
    }
    Ok(body)
}

async fn send_json(
    d: &Deployment,
    api: Api,
    req: reqwest::RequestBuilder,
) -> Result<Value, NativeError> {
    let body = send(d, api, req).await?;
    serde_json::from_slice(&body).map_err(|_| {
        NativeError::new(
            ErrorClass::Server,
            format!("batch API of {} answered with malformed JSON", d.id),
        )
    })
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, NativeError> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| {
        NativeError::new(
            ErrorClass::Server,
            format!("batch API answer has no `{key}`"),
        )
    })
}

pub(crate) async fn submit(
    http: &reqwest::Client,
    api: Api,
    d: &Deployment,
    marker: &str,
    lines: &[Value],
) -> Result<Submitted, NativeError> {
    match api {
        Api::OpenAi | Api::Azure => {
            let base = openai_base(api, d);
            let mut jsonl = Vec::new();
            for l in lines {
                serde_json::to_writer(&mut jsonl, l)
                    .map_err(|e| NativeError::new(ErrorClass::Internal, e.to_string()))?;
                jsonl.push(b'\n');
            }
            let part = reqwest::multipart::Part::bytes(jsonl)
                .file_name(format!("{marker}.jsonl"))
                .mime_str("application/jsonl")
                .map_err(|e| NativeError::new(ErrorClass::Internal, e.to_string()))?;
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part("file", part);
            let file =
                send_json(d, api, http.post(format!("{base}/files")).multipart(form)).await?;
            let file_id = safe_id(str_field(&file, "id")?)?.to_string();
            let endpoint = if api == Api::Azure {
                "/chat/completions"
            } else {
                "/v1/chat/completions"
            };
            let batch = send_json(
                d,
                api,
                http.post(format!("{base}/batches")).json(&json!({
                    "input_file_id": file_id,
                    "endpoint": endpoint,
                    "completion_window": "24h",
                    "metadata": {MARKER_KEY: marker},
                })),
            )
            .await?;
            Ok(Submitted {
                upstream_id: safe_id(str_field(&batch, "id")?)?.to_string(),
                file_id: Some(file_id),
            })
        }
        Api::Anthropic => {
            let batch = send_json(
                d,
                api,
                http.post(anthropic_base(d))
                    .json(&json!({"requests": lines})),
            )
            .await?;
            Ok(Submitted {
                upstream_id: safe_id(str_field(&batch, "id")?)?.to_string(),
                file_id: None,
            })
        }
        Api::Gemini => {
            let url = format!("{}/models/{}:batchGenerateContent", gemini_root(d), d.model);
            let op = send_json(
                d,
                api,
                http.post(url).json(&json!({"batch": {
                    "display_name": marker,
                    "input_config": {"requests": {"requests": lines}},
                }})),
            )
            .await?;
            Ok(Submitted {
                upstream_id: safe_id(str_field(&op, "name")?)?.to_string(),
                file_id: None,
            })
        }
    }
}

/// How far before the recorded start of a lost create call an Anthropic batch may say it
/// was created (the provider's clock is not ours).
const CLOCK_SKEW_SECS: i64 = 300;
/// Pages of a provider's batch list read while looking for a lost create call's batch.
const LIST_PAGES: usize = 10;

/// The upstream batches a lost create call may have made, best match first.
///
/// OpenAI and Azure: the batch whose `metadata.sluice_batch` is the marker. Gemini: the
/// batch whose `displayName` is the marker. Anthropic keeps nothing of ours on a batch
/// that its list shows, so a batch there matches when it holds exactly the call's number
/// of requests and was created since the call began (less [`CLOCK_SKEW_SECS`]), oldest
/// first. A wrong match cannot mix lines up: results map back by `custom_id`, the line's
/// job id, and lines without a result run live or end expired.
pub(crate) async fn find(
    http: &reqwest::Client,
    api: Api,
    d: &Deployment,
    lost: &LostCreate,
) -> Result<Vec<Submitted>, NativeError> {
    match api {
        Api::OpenAi | Api::Azure => {
            let list = send_json(
                d,
                api,
                http.get(format!("{}/batches?limit=100", openai_base(api, d))),
            )
            .await?;
            list.get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|b| b["metadata"][MARKER_KEY].as_str() == Some(lost.marker.as_str()))
                .map(|b| {
                    Ok(Submitted {
                        upstream_id: safe_id(str_field(b, "id")?)?.to_string(),
                        file_id: b["input_file_id"].as_str().map(str::to_string),
                    })
                })
                .collect()
        }
        Api::Gemini => {
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            for _ in 0..LIST_PAGES {
                let mut req = http
                    .get(format!("{}/batches", gemini_root(d)))
                    .query(&[("pageSize", "100")]);
                if let Some(t) = &token {
                    req = req.query(&[("pageToken", t.as_str())]);
                }
                let page = send_json(d, api, req).await?;
                for op in page["operations"].as_array().into_iter().flatten() {
                    let meta = &op["metadata"];
                    let name = meta["displayName"]
                        .as_str()
                        .or(meta["display_name"].as_str());
                    if name == Some(lost.marker.as_str()) {
                        found.push(Submitted {
                            upstream_id: safe_id(str_field(op, "name")?)?.to_string(),
                            file_id: None,
                        });
                    }
                }
                token = page["nextPageToken"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            Ok(found)
        }
        Api::Anthropic => {
            let cutoff = lost.since - chrono::Duration::seconds(CLOCK_SKEW_SECS);
            let mut found: Vec<(chrono::DateTime<chrono::Utc>, Submitted)> = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..LIST_PAGES {
                let mut req = http.get(anthropic_base(d)).query(&[("limit", "100")]);
                if let Some(a) = &after {
                    req = req.query(&[("after_id", a.as_str())]);
                }
                let page = send_json(d, api, req).await?;
                let mut older = false;
                for b in page["data"].as_array().into_iter().flatten() {
                    let Some(created) = b["created_at"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc))
                    else {
                        continue;
                    };
                    if created < cutoff {
                        // Newest first: the rest are older still.
                        older = true;
                        continue;
                    }
                    let counts = &b["request_counts"];
                    let requests: u64 =
                        ["processing", "succeeded", "errored", "canceled", "expired"]
                            .iter()
                            .filter_map(|k| counts[*k].as_u64())
                            .sum();
                    if requests == lost.lines as u64 {
                        found.push((
                            created,
                            Submitted {
                                upstream_id: safe_id(str_field(b, "id")?)?.to_string(),
                                file_id: None,
                            },
                        ));
                    }
                }
                after = page["last_id"].as_str().map(str::to_string);
                if older || page["has_more"].as_bool() != Some(true) || after.is_none() {
                    break;
                }
            }
            found.sort_by_key(|(created, _)| *created);
            Ok(found.into_iter().map(|(_, s)| s).collect())
        }
    }
}

fn openai_end(b: &Value) -> Option<UpstreamEnd> {
    let status = b["status"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some(match status.as_str() {
        "completed" => UpstreamEnd::Completed,
        "expired" => UpstreamEnd::Expired,
        "cancelled" => UpstreamEnd::Cancelled,
        "failed" => UpstreamEnd::Failed(
            b["errors"]["data"][0]["message"]
                .as_str()
                .or(b["errors"]["data"][0]["code"].as_str())
                .unwrap_or("the provider failed the batch")
                .chars()
                .take(500)
                .collect(),
        ),
        _ => return None,
    })
}

fn gemini_state(op: &Value) -> String {
    op["metadata"]["state"]
        .as_str()
        .or(op["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn gemini_end(op: &Value) -> Option<UpstreamEnd> {
    let state = gemini_state(op);
    let word = state.rsplit('_').next().unwrap_or_default();
    Some(match word {
        "SUCCEEDED" => UpstreamEnd::Completed,
        "FAILED" => UpstreamEnd::Failed(
            op["error"]["message"]
                .as_str()
                .unwrap_or("the provider failed the batch")
                .chars()
                .take(500)
                .collect(),
        ),
        "CANCELLED" => UpstreamEnd::Cancelled,
        "EXPIRED" => UpstreamEnd::Expired,
        _ if op["done"].as_bool() == Some(true) => UpstreamEnd::Completed,
        _ => return None,
    })
}

pub(crate) async fn poll(
    http: &reqwest::Client,
    api: Api,
    d: &Deployment,
    id: &str,
) -> Result<UpstreamPoll, NativeError> {
    let id = safe_id(id)?;
    match api {
        Api::OpenAi | Api::Azure => {
            let b = send_json(
                d,
                api,
                http.get(format!("{}/batches/{id}", openai_base(api, d))),
            )
            .await?;
            Ok(UpstreamPoll {
                status: b["status"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_ascii_lowercase(),
                end: openai_end(&b),
            })
        }
        Api::Anthropic => {
            let b = send_json(d, api, http.get(format!("{}/{id}", anthropic_base(d)))).await?;
            let status = b["processing_status"].as_str().unwrap_or("unknown");
            let end = (status == "ended").then(|| {
                if b["cancel_initiated_at"].is_string() {
                    UpstreamEnd::Cancelled
                } else {
                    UpstreamEnd::Completed
                }
            });
            Ok(UpstreamPoll {
                status: status.to_string(),
                end,
            })
        }
        Api::Gemini => {
            let op = send_json(d, api, http.get(format!("{}/{id}", gemini_root(d)))).await?;
            Ok(UpstreamPoll {
                status: gemini_state(&op),
                end: gemini_end(&op),
            })
        }
    }
}

/// OpenAI's output/error line: `{custom_id, response: {status_code, body}, error}`.
fn openai_line(v: &Value) -> Option<RawResult> {
    let custom_id = v["custom_id"].as_str()?.to_string();
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let code = err["code"].as_str().unwrap_or_default();
        // Not run: the line stays unfinished (re-run live or ended by the driver).
        if matches!(code, "batch_expired" | "batch_cancelled") {
            return None;
        }
        let message = err["message"].as_str().unwrap_or(code).to_string();
        return Some(RawResult {
            custom_id,
            outcome: RawOutcome::Error(ErrorClass::Server, message),
        });
    }
    let response = v.get("response")?;
    let status = response["status_code"].as_u64().unwrap_or(0) as u16;
    let body = response.get("body")?;
    let outcome = if (200..300).contains(&status) {
        RawOutcome::Body(serde_json::to_vec(body).ok()?)
    } else {
        RawOutcome::Http(status, body.to_string())
    };
    Some(RawResult { custom_id, outcome })
}

/// Anthropic's result line: `{custom_id, result: {type, message | error}}`.
fn anthropic_line(v: &Value) -> Option<RawResult> {
    let custom_id = v["custom_id"].as_str()?.to_string();
    let result = &v["result"];
    let outcome = match result["type"].as_str()? {
        "succeeded" => RawOutcome::Body(serde_json::to_vec(result.get("message")?).ok()?),
        "errored" => {
            let error = &result["error"];
            // The body a live call would have had: `{type: "error", error: {type, message}}`.
            let inner = if error["error"].is_object() {
                error.clone()
            } else {
                json!({"type": "error", "error": error})
            };
            let status = match inner["error"]["type"].as_str() {
                Some("invalid_request_error") => 400,
                Some("authentication_error") => 401,
                Some("permission_error") => 403,
                Some("not_found_error") => 404,
                Some("rate_limit_error") => 429,
                Some("overloaded_error") => 529,
                _ => 500,
            };
            RawOutcome::Http(status, inner.to_string())
        }
        _ => return None,
    };
    Some(RawResult { custom_id, outcome })
}

/// Gemini's inlined response: `{response | error, metadata: {key}}`.
fn gemini_line(v: &Value) -> Option<RawResult> {
    let custom_id = v["metadata"]["key"].as_str()?.to_string();
    let outcome = if let Some(r) = v.get("response").filter(|r| !r.is_null()) {
        RawOutcome::Body(serde_json::to_vec(r).ok()?)
    } else {
        let e = v.get("error")?;
        let code = e["code"].as_u64().unwrap_or(500) as u16;
        RawOutcome::Http(code, json!({"error": e}).to_string())
    };
    Some(RawResult { custom_id, outcome })
}

fn jsonl(body: &[u8], parse: fn(&Value) -> Option<RawResult>) -> Vec<RawResult> {
    body.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|v| parse(&v))
        .collect()
}

pub(crate) async fn results(
    http: &reqwest::Client,
    api: Api,
    d: &Deployment,
    id: &str,
) -> Result<Vec<RawResult>, NativeError> {
    let id = safe_id(id)?;
    match api {
        Api::OpenAi | Api::Azure => {
            let base = openai_base(api, d);
            let b = send_json(d, api, http.get(format!("{base}/batches/{id}"))).await?;
            let mut out = Vec::new();
            for key in ["output_file_id", "error_file_id"] {
                let Some(file) = b[key].as_str() else {
                    continue;
                };
                let file = safe_id(file)?;
                let body = send(d, api, http.get(format!("{base}/files/{file}/content"))).await?;
                out.extend(jsonl(&body, openai_line));
            }
            Ok(out)
        }
        Api::Anthropic => {
            let body = send(
                d,
                api,
                http.get(format!("{}/{id}/results", anthropic_base(d))),
            )
            .await?;
            Ok(jsonl(&body, anthropic_line))
        }
        Api::Gemini => {
            let op = send_json(d, api, http.get(format!("{}/{id}", gemini_root(d)))).await?;
            let inlined = op["response"]["inlinedResponses"]["inlinedResponses"]
                .as_array()
                .or(op["dest"]["inlinedResponses"].as_array());
            Ok(inlined
                .into_iter()
                .flatten()
                .filter_map(gemini_line)
                .collect())
        }
    }
}

pub(crate) async fn cancel(
    http: &reqwest::Client,
    api: Api,
    d: &Deployment,
    id: &str,
) -> Result<(), NativeError> {
    let id = safe_id(id)?;
    let url = match api {
        Api::OpenAi | Api::Azure => format!("{}/batches/{id}/cancel", openai_base(api, d)),
        Api::Anthropic => format!("{}/{id}/cancel", anthropic_base(d)),
        Api::Gemini => format!("{}/{id}:cancel", gemini_root(d)),
    };
    send(d, api, http.post(url)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_change_the_url_are_refused() {
        assert!(safe_id("batch_abc123").is_ok());
        assert!(safe_id("batches/abc-1").is_ok());
        for bad in ["", "../x", "a?b", "a#b", "http://x", "a b", "a%2e"] {
            assert!(safe_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn result_lines_map_by_custom_id_and_unrun_lines_are_left_out() {
        let ok = json!({"id": "r1", "custom_id": "a", "response": {"status_code": 200, "body": {"x": 1}}, "error": null});
        assert!(matches!(
            openai_line(&ok).unwrap().outcome,
            RawOutcome::Body(_)
        ));
        let bad = json!({"custom_id": "b", "response": {"status_code": 400, "body": {"error": {"message": "no"}}}, "error": null});
        assert!(matches!(
            openai_line(&bad).unwrap().outcome,
            RawOutcome::Http(400, _)
        ));
        let expired = json!({"custom_id": "c", "response": null, "error": {"code": "batch_expired", "message": "x"}});
        assert!(openai_line(&expired).is_none());
        let a = json!({"custom_id": "d", "result": {"type": "expired"}});
        assert!(anthropic_line(&a).is_none());
        let a = json!({"custom_id": "d", "result": {"type": "errored", "error": {"type": "invalid_request_error", "message": "bad"}}});
        assert!(matches!(
            anthropic_line(&a).unwrap().outcome,
            RawOutcome::Http(400, _)
        ));
        let g = json!({"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}, "metadata": {"key": "e"}});
        assert_eq!(gemini_line(&g).unwrap().custom_id, "e");
        assert!(gemini_line(&json!({"response": {}})).is_none());
    }

    #[test]
    fn upstream_states_end_where_the_provider_says() {
        assert_eq!(
            openai_end(&json!({"status": "Completed"})),
            Some(UpstreamEnd::Completed)
        );
        assert_eq!(openai_end(&json!({"status": "in_progress"})), None);
        assert!(matches!(
            openai_end(&json!({"status": "failed", "errors": {"data": [{"code": "token_limit_exceeded", "message": "too many tokens"}]}})),
            Some(UpstreamEnd::Failed(m)) if m == "too many tokens"
        ));
        assert_eq!(
            gemini_end(&json!({"metadata": {"state": "BATCH_STATE_EXPIRED"}})),
            Some(UpstreamEnd::Expired)
        );
        assert_eq!(
            gemini_end(&json!({"metadata": {"state": "JOB_STATE_SUCCEEDED"}})),
            Some(UpstreamEnd::Completed)
        );
        assert_eq!(
            gemini_end(&json!({"metadata": {"state": "BATCH_STATE_RUNNING"}})),
            None
        );
    }
}
