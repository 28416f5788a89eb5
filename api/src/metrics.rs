//! The API's metrics. Rendering lives in [`sluice_core::metrics`]; `GET /metrics` in
//! `routes::metrics`. Labels are bounded: tiers, and model groups that passed
//! validation (so configured ones only), key ids capped
//! ([`sluice_core::metrics::capped`]), matched route patterns and status codes.

use metrics::{counter, describe_counter, describe_histogram, histogram};
use sluice_schemas::Tier;

/// Describes the API's metrics (HELP lines) and installs the recorder.
pub fn describe() {
    sluice_core::metrics::install();
    sluice_core::queue::describe();
    describe_counter!(
        "sluice_jobs_submitted_total",
        "Jobs accepted and enqueued by the API, by tier, model group and key"
    );
    describe_histogram!(
        "sluice_http_request_duration_seconds",
        "API requests by method, route (the matched pattern) and status, until the response head"
    );
}

/// A job was recorded and enqueued for `owner` (a key id or `master`).
pub fn submitted(tier: Tier, model_group: &str, owner: &str) {
    counter!("sluice_jobs_submitted_total", "tier" => tier.as_str(), "model_group" => model_group.to_string(),
        "key" => sluice_core::metrics::capped("key", owner))
    .increment(1);
}

/// An API request was answered.
pub fn request(method: &str, route: &str, status: u16, seconds: f64) {
    histogram!("sluice_http_request_duration_seconds", "method" => method.to_string(),
        "route" => route.to_string(), "status" => status.to_string())
    .record(seconds);
}
