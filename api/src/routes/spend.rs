//! `GET /v1/spend?group_by=model|key|provider|day&from=&to=`: what the ledger says was
//! spent. A virtual key sees only its own spend.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::spend::GroupBy;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize)]
pub struct SpendQuery {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// RFC 3339 time or a `YYYY-MM-DD` day (UTC midnight).
fn parse_time(s: &str, param: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{param}` must be a date (2026-11-21) or an RFC 3339 time"
            ))
            .param(param)
        })
}

pub async fn report(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<SpendQuery>,
) -> Result<Json<Value>, ApiError> {
    let group_name = q.group_by.as_deref().unwrap_or("model");
    let group_by = GroupBy::parse(group_name).ok_or_else(|| {
        ApiError::bad_request("`group_by` must be model, key, provider or day").param("group_by")
    })?;
    let to = match &q.to {
        Some(t) => parse_time(t, "to")?,
        None => Utc::now(),
    };
    let from = match &q.from {
        Some(t) => parse_time(t, "from")?,
        None => to - Duration::days(30),
    };
    if from >= to {
        return Err(ApiError::bad_request("`from` must be before `to`").param("from"));
    }
    let owner = (!caller.is_master()).then_some(caller.owner.as_str());
    let rows = state
        .store
        .spend(group_by, from, to, owner)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "spend query failed");
            ApiError::unavailable("cannot read spend right now")
        })?;
    let (cache_hits, saved) = state
        .store
        .cache_savings(from, to, owner)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cache savings query failed");
            ApiError::unavailable("cannot read spend right now")
        })?;
    let total: Decimal = rows.iter().map(|r| r.cost).sum();
    let unpriced: i64 = rows.iter().map(|r| r.unpriced_calls).sum();
    Ok(Json(json!({
        "object": "sluice.spend",
        "group_by": group_name,
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "total_cost": total.normalize().to_string().parse::<f64>().unwrap_or(0.0),
        "unpriced_calls": unpriced,
        // Jobs answered (wholly or partly) from the response cache, and what the calls
        // they replaced cost.
        "cache_hits": cache_hits,
        "cost_saved": saved.normalize().to_string().parse::<f64>().unwrap_or(0.0),
        "data": rows,
    })))
}
