//! `GET /healthz` (the process is up) and `GET /readyz` (NATS, Redis and Postgres answer
//! and this build's migrations are applied).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sluice_core::readiness::Readiness;

use crate::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
    let r = sluice_core::readiness::check(
        &state.nats,
        &state.redis,
        &state.store,
        state.config.as_ref().into(),
    )
    .await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r))
}
