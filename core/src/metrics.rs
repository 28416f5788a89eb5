//! The process-wide Prometheus recorder that `GET /metrics` renders, on the api and on
//! the worker (and on both at once when they share a process, as in tests).
//!
//! This module owns installation and rendering only. Which metrics exist is decided next
//! to their use: `sluice_api::metrics`, `sluice_worker::metrics`, and the queue gauges in
//! [`crate::queue`]. Naming follows Prometheus conventions (`sluice_*`, `_total`,
//! `_seconds`); every label set is bounded (tiers, statuses, configured groups and
//! deployments, error classes) and never carries a key or other secret.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for every `_seconds` histogram: from 5 ms provider calls to jobs that
/// waited an hour in a backlog.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use. `None` if another recorder was installed first
/// (then Sluice's metrics go there and `/metrics` is empty).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "invalid histogram buckets");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Keeps histogram storage bounded between scrapes; call every few seconds.
pub fn upkeep() {
    if let Some(h) = install() {
        h.run_upkeep();
    }
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
