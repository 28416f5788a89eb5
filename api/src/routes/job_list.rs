//! `GET /v1/jobs`: recent jobs, newest first, filtered by `status`, `model`, `key` and
//! `priority`, paged with `after` (the previous page's `last_id`) and `limit`.
//!
//! A virtual key lists only its own jobs whatever it asks for: the owner filter is set
//! here, on the server, so the console and the CLI cannot widen it.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use sluice_core::job_list::{JobFilter, JobSummary};
use sluice_schemas::{JobStatus, Tier};
use uuid::Uuid;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;
const PARAMS: &str = "status, model, key, priority, after, limit";

/// One page of `GET /v1/jobs`, in the shape of OpenAI's list objects.
#[derive(Debug, Serialize)]
pub struct JobPage {
    object: &'static str,
    data: Vec<JobItem>,
    first_id: Option<Uuid>,
    /// Pass as `after` for the next page.
    last_id: Option<Uuid>,
    has_more: bool,
}

/// A job in a list; times are Unix seconds, as in `GET /v1/jobs/{id}`.
#[derive(Debug, Serialize)]
struct JobItem {
    id: Uuid,
    object: &'static str,
    status: String,
    model: String,
    priority: String,
    /// `master` or the id of the virtual key that submitted it.
    key: String,
    attempts: i32,
    /// USD across all attempts; null when a price is missing.
    #[serde(with = "rust_decimal::serde::float_option")]
    cost: Option<rust_decimal::Decimal>,
    pricing_missing: bool,
    error_class: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    not_before: Option<i64>,
}

impl From<JobSummary> for JobItem {
    fn from(j: JobSummary) -> Self {
        JobItem {
            id: j.id,
            object: "sluice.job",
            status: j.status,
            model: j.model_group,
            priority: j.tier,
            key: j.owner,
            attempts: j.attempts,
            cost: j.cost,
            pricing_missing: j.pricing_missing,
            error_class: j.error_class,
            created_at: j.created_at.timestamp(),
            started_at: j.started_at.map(|t| t.timestamp()),
            finished_at: j.finished_at.map(|t| t.timestamp()),
            not_before: j.not_before.map(|t| t.timestamp()),
        }
    }
}

/// Reads the query string into a filter, naming the parameter that is wrong.
fn parse_filter(params: Vec<(String, String)>) -> Result<JobFilter, ApiError> {
    let mut f = JobFilter {
        limit: DEFAULT_PAGE,
        ..JobFilter::default()
    };
    for (name, value) in params {
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "status" => {
                let s = JobStatus::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`status` {value:?} is not one of queued, running, succeeded, failed, cancelled, expired"
                    ))
                    .param("status")
                })?;
                f.status = Some(s.as_str().to_string());
            }
            "model" => f.model_group = Some(value),
            "key" => f.owner = Some(value),
            "priority" => {
                let t = Tier::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`priority` {value:?} is not one of critical, high, normal, low"
                    ))
                    .param("priority")
                })?;
                f.tier = Some(t.as_str().to_string());
            }
            "after" => {
                let id = Uuid::parse_str(&value).map_err(|_| {
                    ApiError::bad_request("`after` must be a job id (the previous page's last_id)")
                        .param("after")
                })?;
                f.after = Some(id);
            }
            "limit" => {
                f.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`limit` must be a number from 1 to {MAX_PAGE}"
                        ))
                        .param("limit")
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`; known: {PARAMS}"
                ))
                .param(other.to_string()))
            }
        }
    }
    Ok(f)
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<JobPage>, ApiError> {
    let mut filter = parse_filter(params)?;
    if !caller.is_master() {
        if filter.owner.as_ref().is_some_and(|o| *o != caller.owner) {
            // Another key's jobs: a virtual key sees none of them.
            return Ok(Json(page(Vec::new(), false)));
        }
        filter.owner = Some(caller.owner.clone());
    }
    let wanted = filter.limit;
    filter.limit = wanted + 1;
    let mut rows = state.store.list_jobs(&filter).await.map_err(|e| {
        tracing::error!(error = %e, "job list query failed");
        ApiError::unavailable("cannot read jobs right now")
    })?;
    let has_more = rows.len() as i64 > wanted;
    rows.truncate(wanted as usize);
    Ok(Json(page(rows, has_more)))
}

fn page(rows: Vec<JobSummary>, has_more: bool) -> JobPage {
    let data: Vec<JobItem> = rows.into_iter().map(JobItem::from).collect();
    JobPage {
        object: "list",
        first_id: data.first().map(|j| j.id),
        last_id: data.last().map(|j| j.id),
        has_more,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn filters_are_parsed_and_normalised() {
        let f = parse_filter(q(&[
            ("status", "running"),
            ("priority", "1"),
            ("model", "fast"),
            ("key", "key_1"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(f.status.as_deref(), Some("running"));
        assert_eq!(f.tier.as_deref(), Some("high"));
        assert_eq!(f.model_group.as_deref(), Some("fast"));
        assert_eq!(f.owner.as_deref(), Some("key_1"));
        assert_eq!(f.limit, 5);
        assert_eq!(parse_filter(q(&[("status", "")])).unwrap().status, None);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (name, value) in [
            ("status", "done"),
            ("priority", "urgent"),
            ("after", "x"),
            ("limit", "0"),
            ("limit", "101"),
            ("sort", "asc"),
        ] {
            let e = parse_filter(q(&[(name, value)])).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(name), "{name}={value}");
        }
    }
}
