//! `GET /v1/limits`: what every limit holds right now — per deployment (rpm, tpm, calls
//! in flight, cooldown) and per virtual key — read from the same Redis keys admission
//! uses. Master key only.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use deadpool_redis::redis;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

const WINDOW_MS: i64 = 60_000;

struct Usage {
    requests: i64,
    tokens: i64,
    in_flight: i64,
    cooldown_ms: i64,
}

async fn usage(
    conn: &mut deadpool_redis::Connection,
    tag: &str,
    subject: &str,
    now_ms: i64,
) -> Result<Usage, redis::RedisError> {
    let from = now_ms - WINDOW_MS;
    let rpm_key = format!("{tag}:rpm:{subject}");
    let tpm_log = format!("{tag}:tpm:{subject}:log");
    let tpm_amt = format!("{tag}:tpm:{subject}:amt");
    let par_key = format!("{tag}:par:{subject}");
    let requests: i64 = redis::cmd("ZCOUNT")
        .arg(&rpm_key)
        .arg(format!("({from}"))
        .arg("+inf")
        .query_async(conn)
        .await?;
    let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&tpm_log)
        .arg(format!("({from}"))
        .arg("+inf")
        .query_async(conn)
        .await?;
    let tokens = if live.is_empty() {
        0
    } else {
        let amounts: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(&tpm_amt)
            .arg(&live)
            .query_async(conn)
            .await?;
        amounts.into_iter().flatten().sum()
    };
    let in_flight: i64 = redis::cmd("ZCOUNT")
        .arg(&par_key)
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .query_async(conn)
        .await?;
    let cool = subject
        .strip_prefix("dep:")
        .map(|d| format!("{tag}:dep:{d}:cool"));
    let cooldown_ms: i64 = match cool {
        Some(k) => redis::cmd("PTTL")
            .arg(k)
            .query_async::<i64>(conn)
            .await?
            .max(0),
        None => 0,
    };
    Ok(Usage {
        requests,
        tokens,
        in_flight,
        cooldown_ms,
    })
}

pub async fn report(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    if !caller.is_master() {
        return Err(ApiError::forbidden(
            "limits are visible to the master key only",
        ));
    }
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "limits read failed");
        ApiError::unavailable("cannot read limits right now")
    };
    let mut conn = state
        .redis
        .get()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let now_ms = secs * 1000 + micros / 1000;
    let tag = format!("{{{}}}", state.config.subject_prefix);

    let mut deployments = Vec::new();
    for d in &state.config.deployments {
        let u = usage(&mut conn, &tag, &format!("dep:{}", d.id), now_ms)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        deployments.push(json!({
            "id": d.id, "model_group": d.group, "provider": d.provider,
            "rpm": {"used": u.requests, "limit": d.rpm},
            "tpm": {"used": u.tokens, "limit": d.tpm},
            "in_flight": {"used": u.in_flight, "limit": d.max_parallel_requests},
            "cooldown_ms": u.cooldown_ms,
        }));
    }
    let keys = state
        .store
        .api_keys()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut per_key = Vec::new();
    for k in keys {
        let subject = format!("key:{}", k.id);
        let u = usage(&mut conn, &tag, &subject, now_ms)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let spent: Option<String> = redis::cmd("GET")
            .arg(format!("{tag}:bud:{subject}:spent"))
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        per_key.push(json!({
            "id": k.id, "name": k.name,
            "rpm": {"used": u.requests, "limit": k.rpm_limit},
            "tpm": {"used": u.tokens, "limit": k.tpm_limit},
            "in_flight": {"used": u.in_flight, "limit": k.max_parallel_requests},
            "budget": {"spent": spent.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0),
                       "limit": k.max_budget, "period": k.budget_duration},
        }));
    }
    Ok(Json(
        json!({"object": "sluice.limits", "window_secs": WINDOW_MS / 1000, "deployments": deployments, "keys": per_key}),
    ))
}
