//! The worker's own small HTTP server on `SLUICE_METRICS_ADDR`: `GET /metrics`
//! (Prometheus), `GET /healthz` (the process is up) and `GET /readyz` (NATS, Redis and
//! Postgres answer, migrations applied, and the worker is not draining).
//!
//! It keeps serving while the worker drains, so probes and scrapes see the drain; it is
//! stopped last.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use sluice_core::redis::Pool;
use sluice_core::Store;
use sluice_schemas::Subjects;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
pub struct AdminState {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub redis: Pool,
    pub store: Store,
    /// Set when the worker stops pulling.
    pub draining: AtomicBool,
    /// Connection settings, for `/readyz`.
    pub config: Arc<sluice_core::Config>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match sluice_core::queue::snapshot(&state.js, &state.subjects).await {
        Ok(tiers) => sluice_core::queue::record(&tiers),
        Err(e) => tracing::debug!(error = %e, "queue depth unavailable for this scrape"),
    }
    (
        [(header::CONTENT_TYPE, sluice_core::metrics::CONTENT_TYPE)],
        sluice_core::metrics::render(),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut r = sluice_core::readiness::check(
        &state.nats,
        &state.redis,
        &state.store,
        state.config.as_ref().into(),
    )
    .await;
    let draining = state.draining.load(Ordering::Relaxed);
    r.draining = Some(draining);
    let ready = r.ready && !draining;
    r.ready = ready;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r))
}
