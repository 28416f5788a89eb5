//! `GET /metrics`: Prometheus text. Unauthenticated, as scrapers expect; it holds counts
//! and durations only, never a key. Queue-depth gauges are refreshed on each scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match sluice_core::queue::snapshot(&state.js, &state.subjects).await {
        Ok(tiers) => sluice_core::queue::record(&tiers),
        Err(e) => tracing::debug!(error = %e, "queue depth unavailable for this scrape"),
    }
    (
        [(header::CONTENT_TYPE, sluice_core::metrics::CONTENT_TYPE)],
        sluice_core::metrics::render(),
    )
}
