//! The API's metrics. Rendering lives in [`sluice_core::metrics`]; `GET /metrics` in
//! `routes::metrics`. Labels are bounded: tiers, and model groups that passed
//! validation (so configured ones only).

use metrics::{counter, describe_counter};
use sluice_schemas::Tier;

/// Describes the API's metrics (HELP lines) and installs the recorder.
pub fn describe() {
    sluice_core::metrics::install();
    sluice_core::queue::describe();
    describe_counter!(
        "sluice_jobs_submitted_total",
        "Jobs accepted and enqueued by the API, by tier and model group"
    );
}

/// A job was recorded and enqueued.
pub fn submitted(tier: Tier, model_group: &str) {
    counter!("sluice_jobs_submitted_total", "tier" => tier.as_str(), "model_group" => model_group.to_string())
        .increment(1);
}
