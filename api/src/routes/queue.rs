//! `GET /v1/queue` (master key): each tier's backlog from its consumer, and the workers
//! heard from recently (their heartbeats).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use sluice_schemas::ops::QueueView;

use crate::auth::Master;
use crate::errors::ApiError;
use crate::AppState;

pub async fn show(
    State(state): State<Arc<AppState>>,
    _master: Master,
) -> Result<Json<QueueView>, ApiError> {
    let tiers = sluice_core::queue::snapshot(&state.js, &state.subjects)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "queue snapshot failed");
            ApiError::unavailable("cannot read the queue right now")
        })?;
    sluice_core::queue::record(&tiers);
    Ok(Json(QueueView {
        object: "sluice.queue".into(),
        tiers,
        workers: state.workers.seen(),
    }))
}
